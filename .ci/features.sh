#!/usr/bin/env bash
# Fails when a dependency unit of the default build would be compiled with other features by CI's
# feature pass (`--features camera-v4l,ros2,cuda`, see .ci/run): cargo would then compile it again,
# and everything above it (tract included). New units the features bring are fine; what is checked
# is that every "package features" line of the default build (host and target units) is still there.
# The fix is to name the crate with the missing features in the root Cargo.toml (see the comments
# above its bit-vec line and in its build-dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
FEATURES="${1:-camera-v4l,ros2,cuda}"

# "name@version features" for every package node of the resolved graph (host and target variants),
# the workspace's own packages left out (their features are what changes).
units() {
    cargo tree --workspace "$@" -e features -f '{p} {f}' --prefix none --no-dedupe \
        | awk '$2 != "feature" && NF >= 2 && $3 !~ /^\(\// { print $1 "@" $2, $3 }' \
        | grep -v '^referdino' | sort -u
}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
units > "$dir/default"
units --features "$FEATURES" > "$dir/featured"
# Units of the default build that the feature build no longer has as they were.
comm -23 "$dir/default" "$dir/featured" > "$dir/changed"
if [ -s "$dir/changed" ]; then
    echo "features: dependencies of the default build get other features with --features $FEATURES:" >&2
    for p in $(cut -d' ' -f1 "$dir/changed" | sort -u); do
        echo "  $p" >&2
        echo "    default:  $(grep "^$p " "$dir/default" | cut -d' ' -f2- | paste -sd'|')" >&2
        echo "    featured: $(grep "^$p " "$dir/featured" | cut -d' ' -f2- | paste -sd'|')" >&2
    done
    exit 1
fi
echo "features: the $(wc -l < "$dir/default") dependency units of the default build keep their features with --features $FEATURES"
