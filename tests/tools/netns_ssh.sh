#!/usr/bin/env bash
# Stands in for ssh in the multi-host tests: `netns_ssh.sh HOST COMMAND...` runs COMMAND through a
# shell inside the network namespace HOST, with an empty environment like a fresh ssh login (and
# sshd's default PATH for root, sbin directories included) and in a session of its own (so only a remote kill stops it, as with a real ssh). A namespace that
# does not exist fails the way ssh does for an unknown host (exit 255).
host=$1
shift
if [[ ! -e /run/netns/$host ]]; then
  echo "ssh: Could not resolve hostname $host: Name or service not known" >&2
  exit 255
fi
exec setsid -w ip netns exec "$host" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME="${HOME:-/}" /bin/sh -c "$*"
