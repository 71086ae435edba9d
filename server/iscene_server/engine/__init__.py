"""Everything between the networks and the user: model packages, preprocessing, samplers, pipelines."""
