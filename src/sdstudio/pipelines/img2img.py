"""Image-to-image: encode the init image, noise it to the strength's sigma, run the shared loop.

Step rule (A1111 ``sd_samplers_common.setup_img2img_steps`` + ``sd_samplers_kdiffusion
.sample_img2img``): the schedule is built for ``steps`` sigmas and sampling starts at index
``steps - t_enc - 1`` with ``t_enc = int(min(strength, 0.999) * steps)``, so ``t_enc + 1`` steps
run; with ``fix_steps`` (A1111 option "img2img_fix_steps", and always for the hires pass) the
schedule is ``int(steps / min(strength, 0.999))`` long and exactly ``steps`` run.
"""

from __future__ import annotations


def img2img_schedule(steps: int, strength: float, fix_steps: bool = False) -> tuple[int, int]:
    """Return ``(total, start)``: build sigmas for ``total`` steps and sample from index ``start``.

    The loop then runs ``total - start`` steps, starting from ``init + noise * sigmas[start]``.
    >>> img2img_schedule(20, 0.5)
    (20, 9)
    >>> img2img_schedule(20, 0.5, fix_steps=True)
    (40, 20)
    >>> img2img_schedule(20, 1.0)
    (20, 0)
    """
    capped = min(strength, 0.999)
    if fix_steps:
        total = int(steps / capped) if strength > 0 else 0
        t_enc = steps - 1
    else:
        total = steps
        t_enc = int(capped * steps)
    return total, total - t_enc - 1
