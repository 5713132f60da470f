package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

func repoFile(t *testing.T, rel string) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "..", rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// flagsIn returns every --flag named in text.
func flagsIn(text string) []string {
	var out []string
	for _, m := range regexp.MustCompile("(?:^|[\\s\"'(`])--([a-z][a-z0-9-]+)").FindAllStringSubmatch(text, -1) {
		out = append(out, m[1])
	}
	return out
}

// TestDocumentedFlagsExist: every halo-server flag that the systemd unit and
// the README name is a real flag (a renamed flag must not leave stale docs).
func TestDocumentedFlagsExist(t *testing.T) {
	var o options
	fs := newFlagSet(&o, &bytes.Buffer{})
	for _, doc := range []string{"deploy/systemd/halo-server.service", "README.md"} {
		text := repoFile(t, doc)
		// Only the lines about halo-server: ones that run it, the flag table
		// of its README section, and the unit's example arguments (other
		// tools' flags, halo-agent's included, stand elsewhere).
		section := text
		if i := strings.Index(text, "\n## halo-server"); i >= 0 {
			section = text[i+1:]
			if j := strings.Index(section, "\n## "); j >= 0 {
				section = section[:j]
			}
		}
		if i := strings.Index(text, "\n## halo-agent"); i >= 0 {
			rest := text[i+1:]
			if j := strings.Index(rest, "\n## "); j >= 0 {
				text = text[:i+1] + rest[j+1:]
			}
		}
		var keep []string
		for _, l := range strings.Split(text, "\n") {
			// halo-server certs has flags of its own: server/certs checks
			// the README's certs commands by running them.
			if strings.Contains(l, "systemctl") || strings.Contains(l, "halo-agent") || strings.Contains(l, "halo-server certs") {
				continue
			}
			if strings.Contains(l, "halo-server") || strings.Contains(l, "HALO_SERVER_ARGS") || strings.HasPrefix(l, "#     --") {
				keep = append(keep, l)
			}
		}
		for _, l := range strings.Split(section, "\n") {
			if strings.HasPrefix(l, "| `--") {
				keep = append(keep, l)
			}
		}
		for _, f := range flagsIn(strings.Join(keep, "\n")) {
			if fs.Lookup(f) == nil && f != "help" {
				t.Errorf("%s names --%s, which halo-server does not have", doc, f)
			}
		}
	}
}
