#!/usr/bin/env bash
# Fails when a crate built by both the default workspace and `--features ros2` would get different
# features in the two (cargo would then compile it, and everything above it, twice: tract included).
# The fix is to name the crate with the missing features in the root Cargo.toml (see the comment
# above its bit-vec line).
set -euo pipefail
cd "$(dirname "$0")/.."

# "name@version features" for every package node of the resolved graph (host and target variants).
units() {
    cargo tree --workspace "$@" -e features -f '{p} {f}' --prefix none --no-dedupe \
        | awk '$2 != "feature" && NF >= 2 { print $1 "@" $2, $3 }' | sort -u
}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
units > "$dir/default"
units --features ros2 > "$dir/ros2"
cut -d' ' -f1 "$dir/default" | sort -u > "$dir/shared.default"
cut -d' ' -f1 "$dir/ros2" | sort -u > "$dir/shared.ros2"
comm -12 "$dir/shared.default" "$dir/shared.ros2" > "$dir/shared"
# Lines that differ between the two, kept for packages present in both.
comm -3 "$dir/default" "$dir/ros2" | sed 's/^\t//' | awk 'NR == FNR { s[$1] = 1; next } s[$1]' "$dir/shared" - \
    > "$dir/differ"
if [ -s "$dir/differ" ]; then
    echo "features: crates shared by the default and the ros2 builds differ in features:" >&2
    for p in $(cut -d' ' -f1 "$dir/differ" | sort -u); do
        echo "  $p" >&2
        echo "    default: $(grep "^$p " "$dir/default" | cut -d' ' -f2- | paste -sd'|')" >&2
        echo "    ros2:    $(grep "^$p " "$dir/ros2" | cut -d' ' -f2- | paste -sd'|')" >&2
    done
    exit 1
fi
echo "features: $(wc -l < "$dir/shared") crates shared by the default and ros2 builds, same features"
