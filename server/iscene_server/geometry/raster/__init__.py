"""Rasterisers: instance meshes through a camera (:mod:`.triangles`, torch) and rectangle splats on a sample
canvas (:mod:`.splats`, numpy only: the camera solve runs it in worker processes that never import torch, so this
package imports neither module itself)."""
