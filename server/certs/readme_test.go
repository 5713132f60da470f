package certs_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/halolb/halo/server/certs"
)

// TestREADMECommands runs every `halo-server certs` command of the README,
// in order, in a temporary directory: the documented commands work as
// written.
func TestREADMECommands(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ran := 0
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "halo-server certs ") {
			continue
		}
		if i := strings.Index(line, "#"); i >= 0 {
			line = line[:i]
		}
		args := strings.Fields(strings.TrimPrefix(line, "halo-server certs "))
		for i, a := range args {
			if a == "pki" && i > 0 && args[i-1] == "--dir" {
				args[i] = filepath.Join(dir, "pki")
			}
		}
		var out, errb bytes.Buffer
		if code := certs.Main(args, &out, &errb); code != 0 {
			t.Errorf("README: halo-server certs %s: exit %d: %s", strings.Join(args, " "), code, errb.String())
		}
		ran++
	}
	if ran < 4 {
		t.Fatalf("only %d halo-server certs commands found in the README", ran)
	}
}
