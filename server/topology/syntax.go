package topology

import (
	"fmt"
	"net/netip"
	"net/url"
	"path"
	"strconv"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// The checks below return "" for a good value, else a short reason that
// reads well after the field's name ("cluster.apiserver.port: ...").

const maxPort = 65535

// checkPort checks an optional port: 0 (unset) or 1-65535.
func checkPort(p uint32) string {
	if p > maxPort {
		return fmt.Sprintf("%d is out of range: a port is 1-65535 (0 for the default)", p)
	}
	return ""
}

// checkDNSLabel checks a DNS-1123 label: lowercase letters, digits and '-',
// starting and ending with a letter or digit, at most 63 characters.
func checkDNSLabel(s string) string {
	if s == "" {
		return "must not be empty"
	}
	if len(s) > 63 {
		return fmt.Sprintf("%q is longer than 63 characters", s)
	}
	if !isLabel(s) {
		return fmt.Sprintf("%q is not a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit)", s)
	}
	return ""
}

// checkDNSName checks a DNS-1123 subdomain: dot-separated labels, at most 253
// characters. With wildcard, the first label may be "*" (certificate SANs).
// An IP address is not a DNS name.
func checkDNSName(s string, wildcard bool) string {
	if s == "" {
		return "must not be empty"
	}
	if len(s) > 253 {
		return fmt.Sprintf("%q is longer than 253 characters", s)
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return fmt.Sprintf("%q is an IP address, not a DNS name", s)
	}
	labels := strings.Split(s, ".")
	for i, l := range labels {
		if i == 0 && wildcard && l == "*" && len(labels) > 1 {
			continue
		}
		if len(l) > 63 || !isLabel(l) {
			return fmt.Sprintf("%q is not a DNS name (lowercase letters, digits, '-' and '.', each label starting and ending with a letter or digit, no trailing dot)", s)
		}
	}
	return ""
}

func isLabel(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

// parseIP parses a unicast IPv4 or IPv6 address. IPv4-mapped IPv6 addresses
// and zones are refused: they are ambiguous in URLs and certificates.
func parseIP(s string) (netip.Addr, string) {
	if s == "" {
		return netip.Addr{}, "must not be empty"
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Sprintf("%q is not an IP address", s)
	}
	switch {
	case a.Zone() != "":
		return a, fmt.Sprintf("%q has a zone; give the address without %%zone", s)
	case a.Is4In6():
		return a, fmt.Sprintf("%q is an IPv4-mapped IPv6 address; give the IPv4 address %s", s, a.Unmap())
	case a.IsMulticast():
		return a, fmt.Sprintf("%q is a multicast address", s)
	}
	return a, ""
}

// checkHostIP checks the address of a host or VIP: a unicast IP that is not
// the unspecified address.
func checkHostIP(s string) string {
	a, reason := parseIP(s)
	if reason == "" && a.IsUnspecified() {
		reason = fmt.Sprintf("%q is the unspecified address; give the host's own address", s)
	}
	return reason
}

// checkSAN checks a certificate SAN: an IP address or a DNS name (wildcards
// allowed).
func checkSAN(s string) string {
	if _, err := netip.ParseAddr(s); err == nil {
		_, reason := parseIP(s)
		return reason
	}
	if reason := checkDNSName(s, true); reason != "" {
		return fmt.Sprintf("%q is neither an IP address nor a DNS name", s)
	}
	return ""
}

// checkURL checks a URL of one of the schemes, with a host, and without user
// info, query or fragment; path may be empty or "/". With needPort the port
// must be given. It returns the URL's host (IP or DNS name, no brackets).
func checkURL(s string, needPort bool, schemes ...string) (string, string) {
	if s == "" {
		return "", "must not be empty"
	}
	if strings.Contains(s, ",") {
		return "", fmt.Sprintf("%q contains a comma; give one URL per element", s)
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Sprintf("%q is not a URL: %v", s, err)
	}
	okScheme := false
	for _, sc := range schemes {
		okScheme = okScheme || u.Scheme == sc
	}
	if !okScheme {
		return "", fmt.Sprintf("%q must be a URL with scheme %s", s, strings.Join(schemes, " or "))
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" || (u.Path != "" && u.Path != "/") {
		return "", fmt.Sprintf("%q must be scheme://host[:port] only, without user, path, query or fragment", s)
	}
	host := u.Hostname()
	if host == "" {
		return "", fmt.Sprintf("%q has no host", s)
	}
	if reason := checkSAN(host); reason != "" {
		return "", fmt.Sprintf("%q has a bad host: %s", s, reason)
	}
	if a, err := netip.ParseAddr(host); err == nil && a.Is6() && !strings.Contains(u.Host, "[") {
		return "", fmt.Sprintf("%q: an IPv6 host must be in brackets", s)
	}
	port := u.Port()
	if port == "" {
		if needPort {
			return "", fmt.Sprintf("%q must name a port, e.g. %s://%s:%d", s, u.Scheme, u.Host, DefaultEtcdClientPort)
		}
		if strings.HasSuffix(u.Host, ":") {
			return "", fmt.Sprintf("%q has an empty port", s)
		}
		return host, ""
	}
	p, err := strconv.ParseUint(port, 10, 32)
	if err != nil || p == 0 || p > maxPort {
		return "", fmt.Sprintf("%q has port %s out of range 1-65535", s, port)
	}
	return host, ""
}

// checkAbsPath checks a file path on the halo-server replicas.
func checkAbsPath(s string) string {
	if !path.IsAbs(s) {
		return fmt.Sprintf("%q must be an absolute path (a file on the halo-server replicas)", s)
	}
	if path.Clean(s) != s {
		return fmt.Sprintf("%q is not a clean path; did you mean %q?", s, path.Clean(s))
	}
	return ""
}

// checkHTTPPath checks an HTTP request path for a probe.
func checkHTTPPath(s string) string {
	if !strings.HasPrefix(s, "/") {
		return fmt.Sprintf("%q must start with /", s)
	}
	u, err := url.ParseRequestURI(s)
	if err != nil || u.Host != "" || u.Fragment != "" || strings.ContainsAny(s, " \t\r\n") {
		return fmt.Sprintf("%q is not a request path", s)
	}
	return ""
}

// checkLabelKey checks a Kubernetes label key: an optional DNS-subdomain
// prefix and '/', then a name of at most 63 characters.
func checkLabelKey(k string) string {
	name := k
	if i := strings.LastIndexByte(k, '/'); i >= 0 {
		if reason := checkDNSName(k[:i], false); reason != "" {
			return fmt.Sprintf("key %q has a bad prefix: %s", k, reason)
		}
		name = k[i+1:]
	}
	if name == "" || !isLabelValue(name) {
		return fmt.Sprintf("key %q is not a label key (at most 63 of letters, digits, '-', '_' and '.', starting and ending with a letter or digit, after an optional DNS prefix and '/')", k)
	}
	return ""
}

// checkLabelValue checks a Kubernetes label value (may be empty).
func checkLabelValue(v string) string {
	if v != "" && !isLabelValue(v) {
		return fmt.Sprintf("value %q is not a label value (at most 63 of letters, digits, '-', '_' and '.', starting and ending with a letter or digit)", v)
	}
	return ""
}

func isLabelValue(s string) bool {
	if len(s) > 63 || !utf8.ValidString(s) {
		return false
	}
	alnum := func(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' }
	for i := 0; i < len(s); i++ {
		c := s[i]
		if alnum(c) {
			continue
		}
		if (c == '-' || c == '_' || c == '.') && i > 0 && i < len(s)-1 {
			continue
		}
		return false
	}
	return true
}

// unknownFields returns the path of the first field, at any depth of m, that
// this server's schema does not know (sent by a newer client), or "".
func unknownFields(prefix string, m protoreflect.Message) string {
	if len(m.GetUnknown()) > 0 {
		return prefix
	}
	var found string
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		p := prefix + "." + string(fd.Name())
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len() && found == ""; i++ {
				found = unknownFields(fmt.Sprintf("%s[%d]", p, i), l.Get(i).Message())
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				found = unknownFields(fmt.Sprintf("%s[%s]", p, k), mv.Message())
				return found == ""
			})
		case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
			found = unknownFields(p, v.Message())
		}
		return found == ""
	})
	return found
}
