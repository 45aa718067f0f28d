package main

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/berthci/berth/executor/settings"
)

func TestTOMLRegistryHost(t *testing.T) {
	for img, host := range map[string]string{
		"127.0.0.1:5000/group/app":   "127.0.0.1:5000",
		"registry.example.com/g/app": "registry.example.com",
		"group/app":                  "docker.io",
		"":                           "",
	} {
		s := settings.Defaults()
		s.Registry.Image = img
		a := &app{settings: &s}
		assert.Equal(t, host, a.credentials().TOMLHost, img)
	}
}
