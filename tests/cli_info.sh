#!/bin/sh
# SPDX-License-Identifier: MIT
# cli_info.sh UHMM - `uhmm info`: exit 0 or 1 (not usable here), a fix under every
# problem, and --json as one object with the same report (thp, problems).
uhmm=$1
fail() { echo "FAIL: $*"; exit 1; }

out=$("$uhmm" info) ; rc=$?
echo "$out"
[ $rc -le 1 ] || fail "uhmm info exited $rc"
echo "$out" | grep -q '^thp ' || fail "no thp line"
echo "$out" | grep -q '^problems ' || fail "no problems line"
# Each problem line is followed by its fix.
echo "$out" | awk '/^problems/ { p = 1; next }
	p && /^  [^ ]/ { want = 1; next }
	p && want && /^    fix: ./ { want = 0; n++; next }
	p && want { exit 1 }
	END { exit want }' || fail "a problem without its fix"
[ $rc -eq 0 ] || echo "$out" | grep -q '^    fix: ' || fail "exit 1 without a fix"

json=$("$uhmm" info --json) ; jrc=$?
echo "$json"
[ $jrc -eq $rc ] || fail "--json exited $jrc, plain $rc"
for key in '"kernel":' '"thp":{"enabled":' '"defrag":' '"problems":['; do
	case $json in *"$key"*) ;; *) fail "--json lacks $key" ;; esac
done
if command -v python3 >/dev/null 2>&1; then
	printf '%s\n' "$json" | python3 -c '
import json, sys
j = json.load(sys.stdin)
assert set(j["thp"]) == {"enabled", "defrag"}, j["thp"]
for p in j["problems"]:
    assert set(p) == {"problem", "fix"} and p["problem"] and p["fix"], p
' || fail "--json is not the expected object"
fi
echo "ok"
