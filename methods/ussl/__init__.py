"""U-SSL (Wu et al., "Pseudo-Pair based Self-Similarity Learning for Unsupervised Person
Re-identification", IEEE TIP 2022): the adapters `ussl` and `ussl-star` and their parts.

Modules: `surrogate` (Sec. III-A), `similarity` (F, L_C, the factorised gradient similarity, L_GS,
pseudo pairs; Sec. III-B), `intra` (CPAMs, adversary; Sec. III-C1), `inter` (deformable alignment,
non-local offsets, L_S; Sec. III-C2), `network` (backbone stages, embedding, encoders), `adapter`.
"""

from methods.ussl.adapter import USSL, USSLStar

__all__ = ["USSL", "USSLStar"]
