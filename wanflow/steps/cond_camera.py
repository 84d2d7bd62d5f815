"""camera-plucker: the camera poses of a Fun Control-Camera run as the adapter's packed Plücker input.

Poses (a direction and speed, or a pose file: ``camera_poses``) become one Plücker ray
embedding per pixel and output frame (CameraCtrl's construction, which the Fun authors train
with): intrinsics corrected for a 1280x720 pose source, poses relative to the first camera, the
ray through each pixel centre as ``[o x d, d]`` (moment first). The frames are then packed as the
latents are, four pixel frames per latent frame (frame 0 counted four times), channel =
plücker_channel * 4 + frame_in_group: (1, 24, T, H, W) at pixel resolution. One cached step, so
changing the direction, the speed or the pose file re-runs only it and what follows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from wanflow.engine.step import StepSpec
from wanflow.steps.camera_poses import preset_poses, read_pose_file
from wanflow.steps.cond_call import Implementation, ModelCall, tensor

NODE = "camera-plucker"
#: The frame size the pose intrinsics are normalised to (CameraCtrl's RealEstate10K clips).
POSE_SOURCE = (1280, 720)
SIZE_READS = ("video.width", "video.height", "video.frames")
DIRECTION_READS = (*SIZE_READS, "inputs.camera.direction", "inputs.camera.speed")


def intrinsics(rows: Sequence[Sequence[float]], width: int, height: int) -> Any:
    """(F, 4) fp32 pixel intrinsics (fx, fy, cx, cy); fx is rescaled for frames narrower than the
    16:9 pose source, fy for wider ones (CameraCtrl's fit of the source frame to this one)."""
    import torch

    source = POSE_SOURCE[0] / POSE_SOURCE[1]
    out = []
    for row in rows:
        fx, fy, cx, cy = row[1:5]
        if source > width / height:
            fx = height * source * fx / width
        else:
            fy = width / source * fy / height
        out.append((fx * width, fy * height, cx * width, cy * height))
    return torch.tensor(out, dtype=torch.float64).float()


def relative_cameras(rows: Sequence[Sequence[float]]) -> Any:
    """(F, 4, 4) fp32 camera-to-world matrices relative to the first camera (the first is I)."""
    import torch

    w2c = torch.eye(4, dtype=torch.float64).repeat(len(rows), 1, 1)
    w2c[:, :3] = torch.tensor([row[7:] for row in rows], dtype=torch.float64).view(-1, 3, 4)
    c2w = w2c[0] @ torch.linalg.inv(w2c)  # (F, 4, 4): world of camera 0
    c2w[0] = torch.eye(4, dtype=torch.float64)
    return c2w.float()


def plucker(rows: Sequence[Sequence[float]], width: int, height: int) -> Any:
    """(F, H, W, 6) fp32 Plücker embedding [o x d, d] of the ray through every pixel centre."""
    import torch

    k, c2w = intrinsics(rows, width, height), relative_cameras(rows)
    j, i = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                          torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")
    fx, fy, cx, cy = (k[:, n, None] for n in range(4))  # (F, 1) each
    xs, ys = (i.reshape(1, -1) - cx) / fx, (j.reshape(1, -1) - cy) / fy  # (F, HW)
    d = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1)  # (F, HW, 3) camera-frame directions
    d = d / d.norm(dim=-1, keepdim=True)
    d = d @ c2w[:, :3, :3].transpose(-1, -2)  # (F, HW, 3) world directions
    o = c2w[:, None, :3, 3].expand_as(d)  # (F, HW, 3) camera centres
    return torch.cat([torch.linalg.cross(o, d, dim=-1), d], dim=-1).view(len(rows), height, width, 6)


def packed(embedding: Any) -> Any:
    """(F, H, W, C) -> (1, 4C, (F+3)/4, H, W): frame 0 four times, then groups of four frames,
    channel = c * 4 + frame_in_group (the latent frames' grouping of the causal VAE)."""
    import torch

    frames, height, width, channels = embedding.shape
    x = embedding.permute(3, 0, 1, 2)  # (C, F, H, W)
    x = torch.cat([x[:, :1].expand(-1, 3, -1, -1), x], dim=1)  # (C, F+3, H, W)
    x = x.reshape(channels, (frames + 3) // 4, 4, height, width).transpose(1, 2)  # (C, 4, T, H, W)
    return x.reshape(1, channels * 4, (frames + 3) // 4, height, width)


@attrs.frozen
class CameraPlucker:
    """(1, 24, T, H, W): the packed Plücker embedding of the run's camera poses."""

    #: How a direction moves the camera: "translate" (the Fun authors' presets) or "tilt"
    #: (DiffSynth's); unused with a pose file.
    convention: str = "translate"
    from_file: bool = False  # the poses come from [inputs.camera].pose_file
    kind: str = "camera-plucker"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = DIRECTION_READS

    def run(self, ctx: Any) -> dict[str, Any]:
        p = ctx.params
        frames, width, height = p["video.frames"], p["video.width"], p["video.height"]
        if self.from_file:
            rows = read_pose_file(ctx.file("pose_file"), frames)
        else:
            rows = preset_poses(p["inputs.camera.direction"], p["inputs.camera.speed"], frames, self.convention)
        return {"camera": packed(plucker(rows, width, height)).contiguous()}


def _node(job: Any, declared: Any) -> StepSpec | None:
    if job.values.get("inputs.camera.direction") is None:
        return None  # no [inputs.camera]: the family requires it, validation has said so
    convention = declared.option("directions")
    pose_file = job.values.get("inputs.camera.pose_file")
    if pose_file is None:
        return StepSpec(NODE, CameraPlucker(convention))
    return StepSpec(NODE, CameraPlucker(convention, from_file=True), files={"pose_file": job.file("camera.pose_file")},
                    reads=SIZE_READS)


def _hand_off(tensors: Mapping[str, Any], call: ModelCall) -> ModelCall:
    return call.with_extras(camera=tensor(tensors, "camera", "camera"))  # (1, 24, T, H, W)


CAMERA_PLUCKER = Implementation(_node, _hand_off)
