package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestReport(t *testing.T) {
	in := `cpu: test cpu
BenchmarkInvocation/config/berth-2   20  4000000 ns/op  4.0 median-ms
BenchmarkInvocation/config/berth-2   20  4000000 ns/op  6.0 median-ms
BenchmarkInvocation/config/berth-2   20  4000000 ns/op  5.0 median-ms
BenchmarkInvocation/config/bash-2    20  4000000 ns/op  10.0 median-ms
BenchmarkTrivialJob/berth-2           5  1 ns/op  2000 median-ms
BenchmarkTrivialJob/bash-2            5  1 ns/op  1000 median-ms
BenchmarkOutage/berth-2               5  1 ns/op  3 failed  100 longest-gap-ms
BenchmarkOutage/bash-2                5  1 ns/op  40 failed  1200 longest-gap-ms
BenchmarkFault/sigkill-mid-switch/container-2   1  1 ns/op  1.5 serving-s  0 needs-human
BenchmarkFault/kill-the-world/kube-2            1  1 ns/op  60 serving-s  1 needs-human
BenchmarkTrivialJob/before-2          5  1 ns/op  1800 median-ms
BenchmarkDeployJob/berth-2            5  1 ns/op  2600 median-ms  900 outside-step-ms
BenchmarkDeployJob/anchor-2           5  1 ns/op  2400 median-ms  850 outside-step-ms
BenchmarkDeployJob/before-2           5  1 ns/op  1600 median-ms  600 outside-step-ms
BenchmarkProxyCost/proxy-2            3  1 ns/op  3.5 p50-ms  11.6 p99-ms  2474 req-per-s
BenchmarkProxyCost/direct-2           3  1 ns/op  1.1 p50-ms  5.0 p99-ms  7310 req-per-s
BenchmarkProxyCost/caddy-host-2       3  1 ns/op  2.9 p50-ms  10.6 p99-ms  2911 req-per-s
cpu: test cpu
`
	var out bytes.Buffer
	require.NoError(t, run(strings.NewReader(in), &out, "T"))
	s := out.String()
	assert.Contains(t, s, "| Invocation/config | median-ms | 5.0 | 10.0 | 0.50 | ≤ 15 ms | yes |", "the median of three counts")
	assert.Contains(t, s, "| TrivialJob | median-ms | 2000.0 | 1000.0 | 2.00 |")
	assert.Contains(t, s, "| Outage | failed | 3.0 | 40.0 | 0.07 |")
	assert.Contains(t, s, "**no**")
	assert.Equal(t, 1, strings.Count(s, "cpu: test cpu"))
	assert.Contains(t, s, "| sigkill-mid-switch | container | serving | 1.5 | yes |")
	assert.Contains(t, s, "| kill-the-world | kube | needs a human | 60.0 | **no** |")
	assert.Contains(t, s, "| TrivialJob | median-ms | 2000.0 | 1800.0 | +200.0 | cost ≤ 300 ms | yes |")
	assert.Contains(t, s, "| DeployJob | median-ms | 2400.0 | 1600.0 | +800.0 |  |  |", "the deploy step's own changes are not the helper's")
	assert.Contains(t, s, "| DeployJob | outside-step-ms | 850.0 | 600.0 | +250.0 | cost ≤ 300 ms | yes |")
	assert.NotContains(t, s, "| DeployJob | outside-step-ms | 900", "in the helper's table only")
	assert.NotContains(t, s, "| Fault/", "faults are a table of their own")
	assert.Contains(t, s, "| ProxyCost | p50-ms | 3.5 | - | - | 1.1 |  |  |", "metric names with digits")
	assert.Contains(t, s, "| ProxyCost | p99-ms | 11.6 | - | - | 5.0 | ≤ direct + 2 ms | **no** |")
	assert.Contains(t, s, "| ProxyCost | caddy-host | req-per-s | 2911.0 |", "a reference is listed, not compared")

	assert.Error(t, run(strings.NewReader("PASS\n"), &out, "T"), "no results is an error")
}
