package main

import (
	"io"

	"github.com/halolb/halo/server/certs"
)

// runCerts runs `halo-server certs` with the arguments after "certs" and
// returns the exit code.
func runCerts(args []string, stdout, stderr io.Writer) int { return certs.Main(args, stdout, stderr) }
