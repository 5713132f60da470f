package upstream

import "time"

// SetClock replaces the cluster's clock, for tests of ejection times.
func (c *Cluster) SetClock(now func() time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = now
}
