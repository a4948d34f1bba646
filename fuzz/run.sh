#!/bin/sh
# fuzz/run.sh [seconds] - build the API fuzzer (clang's libFuzzer with ASan and
# UBSan, straight from the sources) and run it for that long (default 60).
# Crashes are written to fuzz/out/crash-*; rerun one with
#     fuzz/out/api_fuzz fuzz/out/crash-...
# Needs clang and its runtime (Debian: clang libclang-rt-dev, or
# libclang-rt-14-dev with clang 14); exits 77 with the reason where they are missing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
secs=${1:-60}
out="$here/out"
cc=${CC_FUZZ:-clang}

command -v "$cc" >/dev/null 2>&1 || { echo "fuzz: $cc not found; skipping" >&2; exit 77; }
mkdir -p "$out/corpus"
probe="$out/probe.c"
echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { (void)d; (void)n; return 0; }' >"$probe"
if ! "$cc" -fsanitize=fuzzer,address "$probe" -o "$out/probe" 2>/dev/null; then
	echo "fuzz: $cc cannot link libFuzzer (install libclang-rt-dev); skipping" >&2
	exit 77
fi
"$cc" -std=gnu11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Werror -Wno-unused-parameter \
	-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	-I"$root/include" -I"$root/src" -I"$root/drivers/sim" \
	"$root"/src/*.c "$root"/drivers/sim/*.c "$here/api_fuzz.c" -lpthread -o "$out/api_fuzz"
cd "$out"
# SIGBUS is part of the contract (a poisoned page); the fuzzer catches its own.
ASAN_OPTIONS=handle_sigbus=0:detect_leaks=1 exec ./api_fuzz -max_total_time="$secs" \
	-timeout=60 -rss_limit_mb=4096 corpus
