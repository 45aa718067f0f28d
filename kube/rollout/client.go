package rollout

import (
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/berthci/berth/executor/settings"
)

// NewClient connects to an environment's cluster: in-cluster, or a
// kubeconfig (berth.toml's, else $KUBECONFIG, else ~/.kube/config) and
// context.
func NewClient(s settings.KubeSpec) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if s.InCluster {
		cfg, err = rest.InClusterConfig()
	} else {
		rules := clientcmd.NewDefaultClientConfigLoadingRules()
		if s.Kubeconfig != "" {
			rules.ExplicitPath = s.Kubeconfig
		}
		cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: s.Context}).ClientConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w: set kubeconfig and context (or in_cluster) for the environment", err)
	}
	// a rollout is followed with a few requests every 100 ms: client-go's
	// default of 5 per second would throttle the undo by a second
	cfg.QPS, cfg.Burst = 50, 100
	return kubernetes.NewForConfig(cfg)
}
