#!/usr/bin/env bash
# Builds every consumer project (tests/consumers/README.md) in a fresh temporary directory, runs
# its programs as 2 ranks over TCP on 127.0.0.1 (scripts/run_local.sh), and checks that each rank
# printed its exact "consumer rank R of 2 (MODE, collie X.Y.Z): ok" line. Prints one line per
# consumer, "consumer NAME: passed (Ns)" or "consumer NAME: FAILED: why" (the end of its log goes
# to stderr), then "N passed, M failed"; exits 1 if any failed.
#
#   tests/consumers/run.sh                      # all of them
#   tests/consumers/run.sh pkgconfig bazel      # some of them
#
# Environment: CXX (default g++) for the plain compiler lines and CMake, CXXFLAGS (default -O0:
# these programs are checked, not timed), COLLIE_CONSUMERS_KEEP=1 keeps the temporary directory
# (its path is printed) for a look at the logs and builds, COLLIE_CONSUMERS_FULL=1 adds the
# separate-compilation programs of cmake_subdirectory and bazel (see below).
#
# The separately compiled library is the heaviest translation unit (about twice a header-only
# program), so a default run compiles it twice: once for the install that cmake_install,
# components and pkgconfig share (built with `cmake --install --prefix` into a temporary prefix
# the first time one of them needs it), and once in plain_separate's compiler line. The
# in-tree CMake target (cmake_subdirectory) and Bazel's @collie//:collie_separate build it again
# from the same source with the same flags; COLLIE_CONSUMERS_FULL=1 checks them too.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
consumer_cpp=$here/common/consumer.cpp
all=(cmake_install components pkgconfig cmake_subdirectory cmake_fetchcontent plain_separate bazel)

names=("$@")
((${#names[@]} > 0)) || names=("${all[@]}")
for name in "${names[@]}"; do
  if [[ " ${all[*]} " != *" $name "* ]]; then
    echo "usage: $0 [name...], names: ${all[*]}" >&2
    exit 2
  fi
done

full=${COLLIE_CONSUMERS_FULL:-0}
cxx=${CXX:-g++}
cxxflags=${CXXFLAGS:--O0}
# No build type: the flags are exactly CMAKE_CXX_FLAGS. At most 2 compiles at once.
cmake_flags=(-DCMAKE_BUILD_TYPE= "-DCMAKE_CXX_FLAGS=$cxxflags" "-DCMAKE_CXX_COMPILER=$cxx")
jobs=2

# The version the programs must print, from the same header CMake and Bazel read.
version=
for part in MAJOR MINOR PATCH; do
  number=$(sed -n "s/^#define COLLIE_VERSION_$part \+\([0-9]\+\).*/\1/p" "$repo/include/collie/version.hpp")
  [[ -n $number ]] || { echo "$0: no COLLIE_VERSION_$part in include/collie/version.hpp" >&2; exit 2; }
  version+=${version:+.}$number
done

work=$(mktemp -d "${TMPDIR:-/tmp}/collie-consumers.XXXXXX")
bazel_output_base=
cleanup() {
  # A Bazel server started here would outlive the script and hold its output base.
  if [[ -n $bazel_output_base && -d $bazel_output_base ]]; then
    bazel --output_base="$bazel_output_base" shutdown >/dev/null 2>&1 || true
  fi
  if [[ ${COLLIE_CONSUMERS_KEEP:-0} == 1 ]]; then
    echo "kept $work" >&2
  else
    chmod -R u+w "$work" 2>/dev/null  # Bazel leaves read-only directories in its output base.
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- helpers: each consumer appends to $log and, when something fails, sets $why and returns 1.
log=
why=

# step DESCRIPTION COMMAND...: runs COMMAND with its output in the log.
step() {
  local description=$1
  shift
  echo "+ $*" >>"$log"
  if ! "$@" >>"$log" 2>&1; then
    why="$description failed"
    return 1
  fi
}

# must_fail DESCRIPTION TEXT COMMAND...: COMMAND must fail and print TEXT (a fixed string).
must_fail() {
  local description=$1 text=$2 out=$work/must_fail.out
  shift 2
  echo "+ (must fail, saying '$text') $*" >>"$log"
  if "$@" >"$out" 2>&1; then
    cat "$out" >>"$log"
    why="$description: succeeded, and should have failed"
    return 1
  fi
  cat "$out" >>"$log"
  if ! tr -s ' \n' ' ' <"$out" | grep -qF -- "$text"; then
    why="$description: failed without saying '$text'"
    return 1
  fi
}

# check_ranks PROGRAM MODE: 2 ranks over TCP; each must print its line, with "ok", and exit 0.
check_ranks() {
  local program=$1 mode=$2 out=$work/ranks.out
  echo "+ scripts/run_local.sh 2 $program" >>"$log"
  timeout 120 "$repo/scripts/run_local.sh" 2 "$program" >"$out" 2>&1
  local code=$?
  cat "$out" >>"$log"
  local rank line exited=
  ((code == 0)) || exited=" (exit code $code)"
  for rank in 0 1; do
    line="[$rank] consumer rank $rank of 2 ($mode, collie $version): ok"
    if ! grep -qxF -- "$line" "$out"; then
      local got
      got=$(grep -m1 "^\[$rank\] " "$out")
      why="$(basename "$program")$exited: rank $rank did not print '${line#* }' (got: '${got:-nothing}')"
      return 1
    fi
  done
  if [[ -n $exited ]]; then
    why="$(basename "$program"): every rank printed its line, but run_local.sh exited with $code"
    return 1
  fi
}

# ---- the installed collie, built once --------------------------------------------------------
prefix=$work/prefix
prefix_state=  # "", ok or failed
setup_seconds=0

install_collie() {
  local build=$work/collie-build
  step "configuring collie" cmake -S "$repo" -B "$build" "${cmake_flags[@]}" || return 1
  step "building collie" cmake --build "$build" -j "$jobs" || return 1
  # The prefix is chosen at install time, which the package files must cope with (relocatable).
  step "installing collie" cmake --install "$build" --prefix "$prefix" || return 1
  # Every public header and impl/*.ipp file, and nothing else, under include/.
  if ! diff <(cd "$repo/include" && find collie -type f \( -name '*.hpp' -o -name '*.ipp' \) | sort) \
            <(cd "$prefix/include" && find collie -type f | sort) >>"$log" 2>&1; then
    why="the installed headers differ from include/collie's *.hpp and *.ipp"
    return 1
  fi
  local file
  for file in lib/libcollie_separate.a lib/cmake/collie/collieConfig.cmake \
              lib/cmake/collie/collieConfigVersion.cmake lib/cmake/collie/collieTargets.cmake \
              lib/cmake/collie/collieSeparateTargets.cmake lib/pkgconfig/collie.pc \
              lib/pkgconfig/collie-separate.pc; do
    [[ -f $prefix/$file ]] || { why="$file was not installed"; return 1; }
  done
}

need_prefix() {
  if [[ -z $prefix_state ]]; then
    local saved_log=$log start=$SECONDS
    log=$work/install.log
    why=
    if install_collie; then
      prefix_state=ok
      setup_seconds=$((SECONDS - start))
      echo "(collie $version built and installed into a temporary prefix in ${setup_seconds}s)"
    else
      prefix_state=failed
      echo "(installing collie into a temporary prefix FAILED: $why)"
      tail -n 20 "$log" | sed 's/^/    /' >&2
    fi
    log=$saved_log
  fi
  if [[ $prefix_state != ok ]]; then
    why="collie could not be installed (see above)"
    return 1
  fi
}

# ---- the consumers ---------------------------------------------------------------------------

# find_package(collie CONFIG REQUIRED COMPONENTS separate) from the prefix; one program per mode.
consumer_cmake_install() {
  need_prefix || return 1
  local build=$work/cmake_install
  step "configuring" cmake -S "$here/cmake_install" -B "$build" "${cmake_flags[@]}" \
    "-DCMAKE_PREFIX_PATH=$prefix" || return 1
  # The package must come from the prefix, not from a collie installed on the machine.
  if ! grep -qxF "collie_DIR:PATH=$prefix/lib/cmake/collie" "$build/CMakeCache.txt"; then
    why="collie_DIR is not $prefix/lib/cmake/collie: $(grep '^collie_DIR' "$build/CMakeCache.txt")"
    return 1
  fi
  step "building" cmake --build "$build" -j "$jobs" || return 1
  check_ranks "$build/consumer" header-only || return 1
  check_ranks "$build/consumer_separate" separate
}

# The package's version rule and components, the message for a missing one, and Asio's.
consumer_components() {
  need_prefix || return 1
  local minimal=$work/prefix-minimal no_asio=$work/no-asio build=$work/components
  mkdir -p "$no_asio"
  # collie with TCP on and no asio.hpp where it is told to look: configuring must stop and
  # say which package to install.
  must_fail "configuring collie without Asio" "apt-get install libasio-dev" \
    cmake -S "$repo" -B "$work/collie-no-asio" "-DCOLLIE_ASIO_INCLUDE_DIR=$no_asio" || return 1
  # Without TCP it needs no Asio; without the library it compiles nothing: install at once.
  step "configuring collie without TCP and the library" cmake -S "$repo" -B "$work/collie-minimal" \
    -DCOLLIE_WITH_TCP=OFF -DCOLLIE_BUILD_SEPARATE=OFF "-DCOLLIE_ASIO_INCLUDE_DIR=$no_asio" || return 1
  step "installing collie without TCP and the library" \
    cmake --install "$work/collie-minimal" --prefix "$minimal" || return 1
  local file
  for file in lib/libcollie_separate.a lib/cmake/collie/collieSeparateTargets.cmake \
              lib/pkgconfig/collie-separate.pc; do
    [[ ! -e $minimal/$file ]] || { why="$file installed without the library"; return 1; }
  done
  if PKG_CONFIG_PATH=$minimal/lib/pkgconfig pkg-config --exists collie-separate; then
    why="pkg-config finds collie-separate in an install without the library"
    return 1
  fi
  if [[ " $(PKG_CONFIG_PATH=$minimal/lib/pkgconfig pkg-config --cflags collie) " != *" -DCOLLIE_WITH_TCP=0 "* ]]; then
    why="collie.pc of an install without TCP lacks -DCOLLIE_WITH_TCP=0"
    return 1
  fi

  # The checks of cmake_components/CMakeLists.txt, one configure each in the same build tree.
  local check=(cmake -S "$here/cmake_components" -B "$build" "-DEXPECT_VERSION=$version")
  step "check full" "${check[@]}" -DCHECK=full "-Dcollie_DIR=$prefix/lib/cmake/collie" || return 1
  step "check optional" "${check[@]}" -DCHECK=optional "-Dcollie_DIR=$minimal/lib/cmake/collie" || return 1
  must_fail "check require-separate" \
    "collie::separate) was not installed: build collie with -DCOLLIE_BUILD_SEPARATE=ON" \
    "${check[@]}" -DCHECK=require-separate "-Dcollie_DIR=$minimal/lib/cmake/collie" || return 1
  must_fail "check require-tcp" \
    "built without the TCP transport: build it with -DCOLLIE_WITH_TCP=ON" \
    "${check[@]}" -DCHECK=require-tcp "-Dcollie_DIR=$minimal/lib/cmake/collie" || return 1
  must_fail "check require-unknown" \
    "'frobnicate': collie has no such component (it has: separate, tcp)" \
    "${check[@]}" -DCHECK=require-unknown "-Dcollie_DIR=$prefix/lib/cmake/collie" || return 1
}

# pkg-config against the prefix: collie.pc (header-only) and collie-separate.pc, compiled at once.
consumer_pkgconfig() {
  need_prefix || return 1
  local build=$work/pkgconfig
  mkdir -p "$build"
  local -x PKG_CONFIG_PATH=$prefix/lib/pkgconfig
  local got
  got=$(pkg-config --modversion collie 2>>"$log")
  [[ $got == "$version" ]] || { why="pkg-config --modversion collie is '$got'"; return 1; }
  got=$(realpath -m "$(pkg-config --variable=includedir collie)")
  [[ $got == "$prefix/include" ]] || { why="collie.pc's includedir is $got"; return 1; }
  local header_only=("$cxx" $cxxflags $(pkg-config --cflags collie) "$consumer_cpp"
                     -o "$build/consumer" $(pkg-config --libs collie))
  local separate=("$cxx" $cxxflags $(pkg-config --cflags collie-separate) "$consumer_cpp"
                  -o "$build/consumer_separate" $(pkg-config --libs collie-separate))
  echo "+ ${header_only[*]}" >>"$log"
  echo "+ ${separate[*]}" >>"$log"
  "${header_only[@]}" >"$build/header_only.log" 2>&1 &
  local header_only_pid=$!
  "${separate[@]}" >"$build/separate.log" 2>&1 &
  local separate_pid=$!
  wait "$header_only_pid"
  local header_only_code=$?
  wait "$separate_pid"
  local separate_code=$?
  cat "$build/header_only.log" "$build/separate.log" >>"$log"
  ((header_only_code == 0)) || { why="compiling with pkg-config collie failed"; return 1; }
  ((separate_code == 0)) || { why="compiling with pkg-config collie-separate failed"; return 1; }
  check_ranks "$build/consumer" header-only || return 1
  check_ranks "$build/consumer_separate" separate
}

# add_subdirectory of the source tree, header-only; with COLLIE_CONSUMERS_FULL=1 also a program
# on collie::separate, whose libcollie_separate is then built in the consumer's tree.
consumer_cmake_subdirectory() {
  local build=$work/cmake_subdirectory separate=OFF
  [[ $full == 1 ]] && separate=ON
  step "configuring" cmake -S "$here/cmake_subdirectory" -B "$build" "${cmake_flags[@]}" \
    "-DCOLLIE_SOURCE_DIR=$repo" "-DCONSUMER_SEPARATE=$separate" || return 1
  # As a subproject collie prints nothing of its own.
  if grep -q "^-- collie $version:" "$log"; then
    why="collie printed its status line as a subproject"
    return 1
  fi
  step "building" cmake --build "$build" -j "$jobs" || return 1
  check_ranks "$build/consumer" header-only || return 1
  [[ $separate == OFF ]] || check_ranks "$build/consumer_separate" separate
}

# FetchContent of the source tree, header-only: nothing of collie's is built or installed.
consumer_cmake_fetchcontent() {
  local build=$work/cmake_fetchcontent
  step "configuring" cmake -S "$here/cmake_fetchcontent" -B "$build" "${cmake_flags[@]}" \
    "-DCOLLIE_SOURCE_DIR=$repo" || return 1
  step "building" cmake --build "$build" -j "$jobs" || return 1
  if [[ -n $(find "$build" -name 'libcollie_separate*' -print -quit) ]]; then
    why="libcollie_separate was built, though nothing links it"
    return 1
  fi
  step "installing" cmake --install "$build" --prefix "$work/fetchcontent-install" || return 1
  if [[ -n $(find "$work/fetchcontent-install" -type f -print -quit 2>/dev/null) ]]; then
    why="a subproject collie installed files"
    return 1
  fi
  check_ranks "$build/consumer" header-only
}

# Separate compilation with a plain compiler line: the program's TU and src/collie.cpp, linked.
consumer_plain_separate() {
  local build=$work/plain_separate
  mkdir -p "$build"
  step "compiling" "$cxx" -std=c++20 $cxxflags -DCOLLIE_SEPARATE_COMPILATION -I"$repo/include" \
    "$consumer_cpp" "$repo/src/collie.cpp" -pthread -o "$build/consumer" || return 1
  check_ranks "$build/consumer" separate
}

# A Bazel workspace with local_repository(name = "collie"), offline, in a copy of
# tests/consumers/bazel whose repositories are pointed at this tree; its own output base and
# server, shut down at the end. The program on @collie//:collie, and with COLLIE_CONSUMERS_FULL=1
# the one on @collie//:collie_separate.
consumer_bazel() {
  command -v bazel >/dev/null || { why="bazel is not installed"; return 1; }
  local workspace=$work/bazel/workspace
  mkdir -p "$work/bazel"
  cp -RL "$here/bazel" "$workspace" || { why="copying the workspace failed"; return 1; }
  bazel_output_base=$work/bazel/output
  local overrides=("--override_repository=collie=$repo")
  local targets=(//:consumer)
  [[ $full == 1 ]] && targets+=(//:consumer_separate)
  local stub
  for stub in rules_cc rules_java remote_coverage_tools; do
    overrides+=("--override_repository=$stub=$repo/third_party/$stub")
  done
  (cd "$workspace" && step "bazel build" bazel --output_base="$bazel_output_base" build \
    --noshow_progress "${overrides[@]}" "${targets[@]}") || { why="bazel build failed"; return 1; }
  check_ranks "$workspace/bazel-bin/consumer" header-only || return 1
  if [[ $full == 1 ]]; then
    check_ranks "$workspace/bazel-bin/consumer_separate" separate || return 1
  fi
  step "bazel shutdown" bazel --output_base="$bazel_output_base" shutdown || return 1
}

# ---- run -------------------------------------------------------------------------------------
passed=0
failed=0
total_start=$SECONDS
for name in "${names[@]}"; do
  log=$work/$name.log
  : >"$log"
  why=
  setup_seconds=0  # the shared install, reported on its own line, not in the consumer's time
  start=$SECONDS
  if "consumer_$name"; then
    echo "consumer $name: passed ($((SECONDS - start - setup_seconds))s)"
    ((++passed))
  else
    echo "consumer $name: FAILED: ${why:-see its log}"
    tail -n 20 "$log" | sed 's/^/    /' >&2
    ((++failed))
  fi
done
echo "$passed passed, $failed failed ($((SECONDS - total_start))s in all)"
((failed == 0))
