#!/bin/sh
# Runs the spec suite under Lua 5.4 and LuaJIT, once per kernel level this CPU supports
# (MOONLM_ISA=ref, avx2, ...), then the integration specs (tag "once") once per interpreter,
# and ends with the line "N passed, N failed". Exit status 1 when anything failed.
set -u
BUILD=${BUILD:-build}
SHARED=${SHARED:-../shared}
export MOONLM_SHARED="$SHARED"
BUSTED=${BUSTED:-/usr/bin/busted}
LOGDIR="$BUILD/test-logs"
mkdir -p "$LOGDIR"
rm -f "$LOGDIR"/*.tap

if [ "${SAN:-}" = 1 ]; then
  # the interpreters are not instrumented: preload the runtimes into them
  export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
  export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:allocator_may_return_null=1"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
fi

supported=$(LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="$BUILD/5.4/?.so;;" MOONLM_ISA= \
  lua5.4 -e 'print(require("moonlm.core").info().isa_supported)' 2>/dev/null)
case "$supported" in
  amx) levels="ref avx2 avx512 amx" ;;
  avx512) levels="ref avx2 avx512" ;;
  avx2) levels="ref avx2" ;;
  *) levels="ref" ;;
esac
[ -n "${LEVELS:-}" ] && levels="$LEVELS"

passed=0
failed=0
run() { # name, interpreter, abi, level, busted args...
  name=$1 interp=$2 abi=$3 level=$4
  shift 4
  log="$LOGDIR/$name.tap"
  start=$(date +%s)
  MOONLM_ISA=$level LUA_CPATH="$BUILD/$abi/?.so;;" LUA_PATH="lua/?.lua;lua/?/init.lua;spec/?.lua;;" \
    "$interp" "$BUSTED" -o TAP "$@" >"$log" 2>"$log.err"
  rc=$?
  ok=$(grep -c '^ok ' "$log")
  bad=$(grep -c '^not ok ' "$log")
  if [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then
    bad=1 # crashed or failed to load: count it, show why
    echo "  $name: exit status $rc with no failing test; stderr:"
    tail -n 20 "$log.err" | sed 's/^/    /'
  fi
  passed=$((passed + ok))
  failed=$((failed + bad))
  printf '%-28s %5d passed %4d failed  (%ss)\n' "$name" "$ok" "$bad" "$(($(date +%s) - start))"
  if [ "$bad" -gt 0 ]; then
    awk '/^not ok /{p=1; print "    " $0; next} /^(ok |1\.\.)/{p=0} p{print "    " $0}' "$log" | head -n 60
  fi
}

for interp in lua5.4 luajit; do
  abi=5.4
  [ "$interp" = luajit ] && abi=5.1
  for level in $levels; do
    run "$interp-$level" "$interp" "$abi" "$level" --exclude-tags=once
  done
  # the integration specs (#once) drive other programs (nginx, LÖVE, luarocks, the
  # compilers, the fuzzers) that must not inherit the sanitizer runtime: plain runs only
  if [ "${SAN:-}" != 1 ]; then
    run "$interp-once" "$interp" "$abi" "" --tags=once
  fi
done
[ "${SAN:-}" = 1 ] && echo "(SAN=1: the #once integration specs run in plain make test)"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
