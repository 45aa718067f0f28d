module berth-kube-tools

go 1.26.0
