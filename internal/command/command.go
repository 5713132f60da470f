// Package command holds what halo's commands share on their command line:
// the --log-level, --log-format and --version flags, and parsing with the
// same exit codes (0 for --help and --version, 2 for a usage error).
package command

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/halolb/halo/internal/logging"
	"github.com/halolb/halo/internal/version"
)

// Common are the flags every halo command has.
type Common struct {
	logLevel, logFormat string
	showVersion         bool
}

// Register defines the common flags on fs.
func (c *Common) Register(fs *flag.FlagSet) {
	fs.StringVar(&c.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "auto", "log `format`: json, text, or auto (text on a terminal, else json)")
	fs.BoolVar(&c.showVersion, "version", false, "print the version and exit")
}

// Parse parses args with fs (on which Register was called). When the
// command should not run (--help, --version, a bad flag or argument) it
// returns ok false and the exit code; otherwise the logger the flags ask
// for.
func (c *Common) Parse(fs *flag.FlagSet, args []string, stderr io.Writer) (logger *slog.Logger, exit int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, 0, false
		}
		return nil, 2, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected arguments %q; see --help\n", fs.Name(), fs.Args())
		return nil, 2, false
	}
	if c.showVersion {
		fmt.Fprintln(stderr, fs.Name(), version.String())
		return nil, 0, false
	}
	logger, err := logging.New(stderr, c.logLevel, c.logFormat)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", fs.Name(), err)
		return nil, 2, false
	}
	return logger, 0, true
}
