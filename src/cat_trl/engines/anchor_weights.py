"""Where the frozen anchor pi_0's weights come from, and keeping a pre-trained adapter's pi_0 intact.

pi_0 is the *initial* policy. Depending on how the trainer was set up, it already exists in memory (the PEFT base
with adapters off, TRL's reference model when beta > 0) or must be loaded as a frozen copy; the rules that pick one,
and refuse combinations that would not be pi_0 (a drifting `sync_ref_model` reference, a non-PEFT `peft_base`), live
here. `engines.factory` then builds an engine on the chosen source.
"""

from __future__ import annotations


def resolve_anchor_weights(requested: str, *, is_peft: bool | None, has_ref_model: bool, sync_ref_model: bool) -> str:
    """Where pi_0's weights come from (`peft_base` / `ref_model` / `copy`), refusing combinations that would not be
    pi_0. The one place these rules live: the config calls it when it is built (`is_peft=None`: not known yet, so
    PEFT-dependent rules wait and `auto` stays `auto`), `cat-trl train` before loading the model (PEFT from
    `use_peft`), and the trainer on the real model.

    Args:
        requested: `cat_anchor_weights` (`auto`, `peft_base`, `ref_model`, `copy`).
        is_peft: whether the policy is a PEFT model (None: unknown).
        has_ref_model: whether TRL keeps a separate reference model (beta > 0 without PEFT).
        sync_ref_model: TRL moves its reference model towards the policy (it then stops being pi_0).

    Returns:
        the weight source; `auto` only while `is_peft` is None.

    Raises:
        ValueError: naming the setting to change.
    """
    if requested == "auto":
        if is_peft is None:
            return "auto"
        if is_peft:
            return "peft_base"
        if has_ref_model and not sync_ref_model:
            return "ref_model"
        return "copy"
    if requested == "peft_base" and is_peft is False:
        raise ValueError("cat_anchor_weights=peft_base needs a PEFT policy (use_peft: true; the anchor is the "
                         "adapter-disabled base). Use `copy` otherwise.")
    if requested == "ref_model":
        if sync_ref_model:
            raise ValueError(
                "cat_anchor_weights=ref_model with sync_ref_model=true: TRL would move the reference model towards the "
                "policy, so the anchor would stop being the initial policy pi_0. Set sync_ref_model: false, or use "
                "cat_anchor_weights: copy."
            )
        if is_peft:
            raise ValueError("cat_anchor_weights=ref_model with use_peft: TRL keeps no separate reference model under "
                             "PEFT; use peft_base (the same weights, no extra memory).")
        if not has_ref_model:
            raise ValueError(
                "cat_anchor_weights=ref_model but there is no reference model: TRL keeps one only when beta > 0. Set "
                "beta > 0, or use cat_anchor_weights: copy (or peft_base with PEFT)."
            )
    return requested


def freeze_initial_adapter(model) -> bool:
    """Keeps a frozen copy of a *pre-trained* adapter as pi_0 when TRL does not (it only does when beta > 0).

    With a `PeftModel` passed in, "adapters off" is the base model, not the initial policy (base + adapter). TRL adds
    a frozen "ref" copy of the adapter only when beta > 0; CaT needs pi_0 regardless, so it adds the same copy (a few
    MB) itself. Returns whether a copy was added."""
    from peft import PeftModel

    if not isinstance(model, PeftModel) or "ref" in model.peft_config:
        return False
    default = model.peft_config.get("default")
    if default is None:
        raise ValueError(
            "CaT's peft_base anchor needs the pre-trained adapter to be named 'default' (found "
            f"{sorted(model.peft_config)}); or use cat_anchor_weights: copy with the merged initial checkpoint."
        )
    try:
        model.add_adapter("ref", default)
    except Exception as err:  # e.g. peft#3340 (target_parameters, PEFT < 0.20)
        raise ValueError(
            f"Could not add a frozen copy of the pre-trained adapter as the anchor ({err}). Use cat_anchor_weights: "
            "copy with cat_anchor_model_name_or_path pointing at the merged initial checkpoint."
        ) from err
    for name, param in model.named_parameters():
        if ".ref." in name:
            param.requires_grad_(False)
            param.data.copy_(model.get_parameter(name.replace(".ref.", ".default.")).data)
    model.set_adapter("default")
    return True
