"""The reconciler's Kubernetes side: API client, Events, Service and LoadBalancerConfig status,
LoadBalancerConfig CRs as intent, and leader election. (The live cluster source is in
reconciler/cluster/live.py; kube-proxy fallback: the patches in reconciler/fallback.py, sent by kube/fallback.py.)"""
