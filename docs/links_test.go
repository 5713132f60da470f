package docs_test

import (
	"bytes"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"
)

// skipDirs are directories that are not part of the repository's sources:
// git's own, and what .gitignore keeps out (tools, binaries, the quick
// start's data and cache directories).
var skipDirs = []string{".git", ".bin", "bin", "halo-data", "halo-agent-cache"}

// outside is a path that leaves the repository; it is spelled in two parts
// so that this file does not mention it.
var outside = "../" + "shared"

// root returns the repository's root: the parent of this package's
// directory, which holds go.mod.
func root(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Fatalf("repository root: %v", err)
	}
	return dir
}

// files returns every file of the repository, relative to its root.
func files(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != dir && slices.Contains(skipDirs, d.Name()) {
				return filepath.SkipDir
			}
			return nil
		}
		if d.Type().IsRegular() {
			rel, err := filepath.Rel(dir, path)
			if err != nil {
				return err
			}
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return out
}

// TestNothingRefersOutside fails when any file of the repository names a
// path outside it that a clone does not have.
func TestNothingRefersOutside(t *testing.T) {
	dir := root(t)
	for _, f := range files(t, dir) {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range bytes.Split(b, []byte("\n")) {
			if bytes.Contains(line, []byte(outside)) {
				t.Errorf("%s:%d refers to %s, which is not in the repository", f, i+1, outside)
			}
		}
	}
}

var (
	// fence opens or closes a fenced code block.
	fence = regexp.MustCompile("^\\s*(```|~~~)")
	// codeSpan is inline code, whose brackets are not links.
	codeSpan = regexp.MustCompile("`+[^`]*`+")
	// inlineLink is [text](target) or ![alt](target "title"); the text
	// may hold one level of brackets.
	inlineLink = regexp.MustCompile(`!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)`)
	// refLink is a link reference definition: [label]: target.
	refLink = regexp.MustCompile(`^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?`)
	// heading is an ATX heading.
	heading = regexp.MustCompile(`^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$`)
	// scheme starts an absolute URL (https:, mailto:...).
	scheme = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)
)

// link is one relative link found in a Markdown file.
type link struct {
	line   int
	target string
}

// parse returns a Markdown file's relative links and its headings' anchors
// (as GitHub makes them).
func parse(text string) (links []link, anchors map[string]bool) {
	anchors = map[string]bool{}
	seen := map[string]int{}
	inFence := false
	for i, line := range strings.Split(text, "\n") {
		if fence.MatchString(line) {
			inFence = !inFence
			continue
		}
		if inFence {
			continue
		}
		if m := heading.FindStringSubmatch(line); m != nil {
			a := slug(m[1])
			if n := seen[a]; n > 0 {
				anchors[fmt.Sprintf("%s-%d", a, n)] = true
			} else {
				anchors[a] = true
			}
			seen[a]++
		}
		plain := codeSpan.ReplaceAllString(line, "")
		var targets []string
		for _, m := range inlineLink.FindAllStringSubmatch(plain, -1) {
			targets = append(targets, m[1])
		}
		if m := refLink.FindStringSubmatch(plain); m != nil {
			targets = append(targets, m[1])
		}
		for _, tgt := range targets {
			if !scheme.MatchString(tgt) {
				links = append(links, link{line: i + 1, target: tgt})
			}
		}
	}
	return links, anchors
}

// slug is GitHub's anchor for a heading: lower case, inline code and
// emphasis marks and other punctuation dropped, spaces turned into '-'.
func slug(h string) string {
	h = inlineLink.ReplaceAllStringFunc(h, func(s string) string {
		return s[strings.Index(s, "[")+1 : strings.LastIndex(s, "](")]
	})
	var b strings.Builder
	for _, r := range strings.ToLower(h) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// TestMarkdownLinks checks every relative link of every Markdown file: its
// target must exist in the repository and, when it names a heading
// (#anchor) of a Markdown file, that heading too.
func TestMarkdownLinks(t *testing.T) {
	dir := root(t)
	type doc struct {
		links   []link
		anchors map[string]bool
	}
	docs := map[string]doc{}
	for _, f := range files(t, dir) {
		if strings.HasSuffix(f, ".md") {
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			l, a := parse(string(b))
			docs[f] = doc{l, a}
		}
	}
	if len(docs) == 0 {
		t.Fatal("no Markdown file found")
	}
	checked := 0
	for _, f := range slices.Sorted(maps.Keys(docs)) {
		for _, l := range docs[f].links {
			checked++
			path, anchor, _ := strings.Cut(l.target, "#")
			target := f
			if path != "" {
				target = filepath.ToSlash(filepath.Clean(filepath.Join(filepath.Dir(f), path)))
				if target == ".." || strings.HasPrefix(target, "../") {
					t.Errorf("%s:%d: %s leaves the repository", f, l.line, l.target)
					continue
				}
				if _, err := os.Stat(filepath.Join(dir, target)); err != nil {
					t.Errorf("%s:%d: %s: no such file in the repository", f, l.line, l.target)
					continue
				}
			}
			if anchor == "" || !strings.HasSuffix(target, ".md") {
				continue
			}
			if !docs[target].anchors[anchor] {
				t.Errorf("%s:%d: %s: %s has no heading with anchor #%s", f, l.line, l.target, target, anchor)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no relative link found: the parser is broken")
	}
}

// TestParse pins the parser on the forms the documents use, so that a
// broken parser cannot pass the link check by finding nothing.
func TestParse(t *testing.T) {
	text := strings.Join([]string{
		"# The `halo` model: Kubespray's variables",
		"## Health: one prober, every agent follows",
		"## Health: one prober, every agent follows",
		"See [`proto/halo/v1`](proto/halo/v1) and [the doc](docs/a.md#x \"title\").",
		"![img](img.png) [web](https://example.com) [anchor](#here) `[not](a-link.md)`",
		"[ref]: docs/b.md",
		"```",
		"[in a fence](c.md)",
		"```",
	}, "\n")
	links, anchors := parse(text)
	var got []string
	for _, l := range links {
		got = append(got, fmt.Sprintf("%d:%s", l.line, l.target))
	}
	want := []string{"4:proto/halo/v1", "4:docs/a.md#x", "5:img.png", "5:#here", "6:docs/b.md"}
	if !slices.Equal(got, want) {
		t.Errorf("links: got %q, want %q", got, want)
	}
	for _, a := range []string{"the-halo-model-kubesprays-variables", "health-one-prober-every-agent-follows", "health-one-prober-every-agent-follows-1"} {
		if !anchors[a] {
			t.Errorf("anchor %q missing from %v", a, anchors)
		}
	}
}
