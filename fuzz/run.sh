#!/usr/bin/env bash
# fuzz/run.sh [SECONDS] - build fuzz/api_fuzz.c with clang (libFuzzer + ASan + UBSan)
# against the library sources (CMakeLists.txt's UHMM_SOURCES) and run it on a copy
# of fuzz/corpus for SECONDS (default 60). Exit 0 when clean, 1 on a finding (the
# reproducer is left in $FUZZ_BUILD), 0 with "skip:" when clang or libFuzzer is
# missing (Debian: apt-get install clang libclang-rt-14-dev).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs=${1:-60}
cc=${FUZZ_CC:-clang}
out=${FUZZ_BUILD:-fuzz/out}

if ! command -v "$cc" >/dev/null 2>&1; then
	echo "skip: $cc not found (apt-get install clang libclang-rt-14-dev)"
	exit 0
fi
mkdir -p "$out/obj" "$out/corpus"
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n)\n{ (void)d; (void)n; return 0; }\n' >"$out/probe.c"
if ! "$cc" -fsanitize=fuzzer,address,undefined "$out/probe.c" -o "$out/probe" >/dev/null 2>&1; then
	echo "skip: $cc cannot link -fsanitize=fuzzer (the libFuzzer runtime is missing: apt-get install libclang-rt-14-dev)"
	exit 0
fi

# The library's sources, as the CMake build lists them.
mapfile -t srcs < <(sed -n '/^set(UHMM_SOURCES/,/^)/p' CMakeLists.txt | grep -o '[A-Za-z0-9_/.-]*\.c')
[ "${#srcs[@]}" -gt 0 ] || { echo "fuzz/run.sh: no UHMM_SOURCES in CMakeLists.txt" >&2; exit 1; }

san=(-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
common=(-g -O1 -std=gnu11 -D_GNU_SOURCE -pthread -Iinclude -Isrc "${san[@]}")
objs=()
for s in "${srcs[@]}"; do
	o="$out/obj/$(echo "$s" | tr '/' '_').o"
	"$cc" "${common[@]}" -fsanitize=fuzzer-no-link -c "$s" -o "$o"
	objs+=("$o")
done
"$cc" "${common[@]}" -fsanitize=fuzzer -Wall -Wextra -Wshadow -Wstrict-prototypes \
	-Wmissing-prototypes -Werror -c fuzz/api_fuzz.c -o "$out/obj/api_fuzz.o"
"$cc" "${san[@]}" -fsanitize=fuzzer -pthread "$out/obj/api_fuzz.o" "${objs[@]}" -o "$out/api_fuzz"

# Sanitizer runtimes of this toolchain do not cope with 32 bits of mmap randomisation.
wrap=()
if [ "$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo 0)" -gt 28 ] && command -v setarch >/dev/null; then
	wrap=(setarch "$(uname -m)" -R)
fi

# SIGBUS belongs to uhmm (signal mode) and to the harness (poisoned pages), not to the runtimes.
log="$out/fuzz.log"
set +e
ASAN_OPTIONS=handle_sigbus=0:detect_leaks=1:allocator_may_return_null=1 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	"${wrap[@]}" "$out/api_fuzz" -max_total_time="$secs" -handle_bus=0 -timeout=25 \
	-rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$out/" \
	"$out/corpus" fuzz/corpus >"$log" 2>&1
rc=$?
set -e
tail -n 25 "$log"
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
echo "fuzz/run.sh: ${execs:-?} executions in $secs s, exit $rc (log: $log)"
exit $rc
