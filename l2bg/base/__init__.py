"""The bottom layer: errors, registries, atomic files and seals, locks, crash points, bounds, output
directories and the native extension's loader. It imports no other part of l2bg."""
