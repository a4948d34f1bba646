#!/bin/sh
# SPDX-License-Identifier: MIT
# cli_stat.sh UHMM - `uhmm stat` (not on a terminal: one final table): every
# counter row is there, and the per-range rows add up: the demo's workload
# ends with the CPU reading every page of both ranges, so each range's pages
# home equal its pages to devices, and the input went to a device at all.
uhmm=$1
fail() { echo "FAIL: $*"; exit 1; }

out=$("$uhmm" stat --size 8) ; rc=$?
echo "$out"
[ $rc -eq 77 ] && exit 77
[ $rc -eq 0 ] || fail "uhmm stat exited $rc"
total() { # group, counter name: the total column of that row
	echo "$out" | awk -v g="$1" -v n="$2" '$1 == g && index($0, n) { print $(NF - 1); exit }'
}
for g in input output; do
	for n in "CPU faults home" "pages to devices" "pages home" "pages prefetched" "evictions"; do
		[ -n "$(total $g "$n")" ] || fail "no row '$g $n'"
	done
	to=$(total $g "pages to devices")
	home=$(total $g "pages home")
	[ "$to" = "$home" ] || fail "$g: $to pages to devices, $home home"
done
[ "$(total input "pages to devices")" -gt 0 ] || fail "the input never went to a device"
echo "ok"
