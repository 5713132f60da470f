package config_test

import (
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/halolb/halo/agent/config"
)

func TestTypeURLsAreEnvoys(t *testing.T) {
	for got, want := range map[string]string{config.ListenerType: resource.ListenerType, config.ClusterType: resource.ClusterType, config.EndpointType: resource.EndpointType} {
		if got != want {
			t.Errorf("%s, want %s", got, want)
		}
	}
}
