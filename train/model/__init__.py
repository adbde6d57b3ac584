"""The MCLD model on stock diffusers modules: UNets, ReferenceNet attention, MFCA, pose guider, face projector."""

from train.model.attention import AttentionContext, MFCAProcessor, set_face_scale
from train.model.mcld import MCLD, build_face_projector, build_mcld

__all__ = ["MCLD", "AttentionContext", "MFCAProcessor", "build_face_projector", "build_mcld", "set_face_scale"]
