//! Helpers shared by the end-to-end tests: locating the built binaries, free ports, process guards.
