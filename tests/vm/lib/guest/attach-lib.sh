# Helpers of the attach-* VM cases (sourced after /src/tests/kmod/vm-lib.sh):
# what a case needs to see mapping processes, their records and logs.

# fail MESSAGE: the case fails, showing what the mapping processes logged.
fail() {
  echo "FAIL: $*"
  for _f in /run/dmu/*.log /tmp/serve.log; do
    [ -f "$_f" ] && { echo "==== $_f"; tail -40 "$_f"; }
  done
  dmesg | tail -20
  exit 1
}

# serving NAME: a `dmu serve --name NAME` process (or its supervisor) exists.
serving() {
  for _c in /proc/[0-9]*/cmdline; do
    { tr '\0' ' ' <"$_c"; } 2>/dev/null | grep -q "^dmu serve --name $1 " && return 0
  done
  return 1
}

# wait_gone NAME: until no mapping process of NAME is left (30 s).
wait_gone() {
  _i=0
  while serving "$1"; do
    _i=$((_i + 1))
    [ $_i -lt 300 ] || fail "the mapping process of $1 did not go away"
    sleep 0.1
  done
}

# record_field NAME FIELD: a number from /run/dmu/NAME.json.
record_field() {
  sed -n "s/.*\"$2\": \([0-9][0-9]*\).*/\1/p" "/run/dmu/$1.json"
}

# daemon_counter NAME KEY: a number of the mapping process's, from
# `dmu stats NAME --output=json` ("daemon" holds only numbers).
daemon_counter() {
  dmu stats "$1" --output=json | tr -d '\n ' | sed -n 's/.*"daemon":{\([^}]*\)}.*/\1/p' |
    grep -o "\"$2\":[0-9]*" | cut -d: -f2
}

# wait_replaced NAME PID: until a mapping process other than PID has bound
# NAME and written its pid into the record (15 s); prints the milliseconds.
wait_replaced() {
  _t0=$(now_ms)
  _i=0
  while [ "$(record_field "$1" pid)" = "$2" ]; do
    _i=$((_i + 1))
    [ $_i -lt 300 ] || fail "no new mapping process of $1 replaced pid $2 within 15 s"
    sleep 0.05
  done
  echo $(($(now_ms) - _t0))
}

# replaced_within_a_second WHAT NAME PID: wait_replaced, failing unless the
# new mapping process bound within a second of PID's death (the promise for
# a mapping process that dies: its supervisor starts the next at once).
replaced_within_a_second() {
  _ms=$(wait_replaced "$2" "$3") || fail "$1: $_ms"
  [ "$_ms" -le 1000 ] || fail "$1: a new mapping process of $2 bound $_ms ms after pid $3 died, not within a second"
  echo "$1: new mapping process $(record_field "$2" pid) bound $_ms ms after pid $3 died"
}
