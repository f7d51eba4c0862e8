#!/usr/bin/env bash
# Stands in for ssh in the launcher tests: `fake_ssh.sh HOST COMMAND...` runs COMMAND through a
# shell here, with an empty environment like a fresh ssh login, in a session of its own (so the
# launcher cannot stop it by signalling the local process: it has to use the remote kill, as with
# a real ssh). A host named "unreachable" fails the way ssh does (exit 255).
host=$1
shift
if [[ $host == unreachable ]]; then
  echo "ssh: connect to host $host port 22: Connection refused" >&2
  exit 255
fi
exec setsid -w env -i PATH="$PATH" HOME="${HOME:-/}" FAKE_SSH_HOST="$host" /bin/sh -c "$*"
