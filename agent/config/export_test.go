package config

// Allowlist exposes the allowlist to the tests, which check that every
// name in it exists.
var Allowlist = allowlist
