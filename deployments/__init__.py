"""Ray Serve deployments: one class per kind of replica, thin wrappers over pipelines/."""
