// Package summary reduces a benchmark's repeated runs to the figures its
// tables show.
package summary

import "slices"

// Of returns the median, min and max of vs (ok false if empty). The median
// of an even count is the mean of the middle two; +Inf (never happened
// within the run) sorts last.
func Of(vs []float64) (med, lo, hi float64, ok bool) {
	if len(vs) == 0 {
		return 0, 0, 0, false
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	med = s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return med, s[0], s[n-1], true
}
