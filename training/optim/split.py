"""The strict Muon / C3O parameter split (SPEC §3 "Muon, strict orthogonal split").

The rule is by *role*, not by shape: the model declares each parameter's role through
``model.param_roles() -> {name: role}``; role ``"matrix"`` (a 2-D weight inside a transformer block)
goes to Muon, every other role (``"embedding"``, ``"head"``, ``"norm"``) goes to C3O even when 2-D.
Any mismatch between the model's parameters and its declared roles is a start-up error naming the
parameter, so a new parameter can never silently land in the wrong optimizer (or in none).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

MUON_ROLE = "matrix"
C3O_ROLES = ("embedding", "head", "norm")
ROLES = (MUON_ROLE, *C3O_ROLES)
# When one tensor is tied under several C3O names (embedding == head), the role reported for it is
# the first of its roles in this order; it decides the weight-decay group (see build_optimizers).
_ROLE_PRECEDENCE = {role: i for i, role in enumerate(C3O_ROLES)}


@dataclass
class ParamSplit:
    """Result of :func:`split_params`. Each trainable tensor appears exactly once, under its first name."""

    muon: list[tuple[str, nn.Parameter]]
    c3o: list[tuple[str, nn.Parameter]]
    roles: dict[str, str]
    """Role of each listed (first) name; for tied tensors the precedence role (embedding > head > norm)."""
    aliases: dict[str, list[str]] = field(default_factory=dict)
    """Tied tensors: first name -> the other names the same tensor is registered under."""

    @property
    def muon_numel(self) -> int:
        return sum(p.numel() for _, p in self.muon)

    @property
    def c3o_numel(self) -> int:
        return sum(p.numel() for _, p in self.c3o)

    @property
    def summary(self) -> dict[str, int]:
        """What start-up logs: ``muon_params``, ``c3o_params`` (tensor counts) and element counts."""
        return {
            "muon_params": len(self.muon),
            "c3o_params": len(self.c3o),
            "muon_numel": self.muon_numel,
            "c3o_numel": self.c3o_numel,
        }


def split_params(model: nn.Module) -> ParamSplit:
    """Split ``model``'s trainable parameters into Muon and C3O groups by declared role.

    Rules (each violation raises ``ValueError`` naming the parameter and the rule):
      * every parameter tensor has a role in ``param_roles()`` (a tied tensor, e.g. a head that *is*
        the embedding, needs one under at least one of its names; ``named_parameters()`` lists it once);
      * every name in ``param_roles()`` is a parameter of the model;
      * roles are one of ``ROLES``; ``"matrix"`` parameters are 2-D;
      * a tensor tied under several names cannot be both ``"matrix"`` and a C3O role.
    Frozen parameters (``requires_grad=False``) may have roles but are left out of both groups.
    """
    roles = model.param_roles()
    # remove_duplicate=False so tied aliases (e.g. lm_head.weight is embed_tokens.weight) are seen too.
    named = list(model.named_parameters(remove_duplicate=False))
    param_names = {name for name, _ in named}
    for name in roles:
        if name not in param_names:
            raise ValueError(
                f"param_roles() names {name!r}, which is not a parameter of the model. "
                "Rule: param_roles() must list exactly the model's parameters; remove or rename the entry."
            )

    names_by_tensor: dict[int, list[str]] = {}  # id(tensor) -> its names, first-registered first
    params: dict[int, nn.Parameter] = {}
    for name, p in named:
        names_by_tensor.setdefault(id(p), []).append(name)
        params.setdefault(id(p), p)

    muon: list[tuple[str, nn.Parameter]] = []
    c3o: list[tuple[str, nn.Parameter]] = []
    out_roles: dict[str, str] = {}
    aliases: dict[str, list[str]] = {}
    for key, names in names_by_tensor.items():
        p, first = params[key], names[0]
        declared = {n: roles[n] for n in names if n in roles}
        if not declared:
            raise ValueError(
                f"Parameter {first!r} (shape {tuple(p.shape)}) has no entry in param_roles(). "
                f"Rule: every parameter declares one role out of {ROLES}."
            )
        for name, role in declared.items():
            if role not in ROLES:
                raise ValueError(
                    f"Parameter {name!r} has unknown role {role!r}. Rule: roles are one of {ROLES}."
                )
            if role == MUON_ROLE and p.ndim != 2:
                raise ValueError(
                    f"Parameter {name!r} has role 'matrix' but shape {tuple(p.shape)} ({p.ndim}-D). "
                    "Rule: Muon only takes 2-D block weights; give it a C3O role (e.g. 'norm') instead."
                )
        these = set(declared.values())
        if MUON_ROLE in these and len(these) > 1:
            raise ValueError(
                f"Parameter {first!r} is tied under names {names} with roles {declared}. "
                "Rule: a tensor belongs to exactly one optimizer; 'matrix' cannot be tied to a C3O role."
            )
        if not p.requires_grad:
            continue
        if len(names) > 1:
            aliases[first] = names[1:]
        if these == {MUON_ROLE}:
            muon.append((first, p))
            out_roles[first] = MUON_ROLE
        else:
            c3o.append((first, p))
            out_roles[first] = min(these, key=_ROLE_PRECEDENCE.__getitem__)
    return ParamSplit(muon=muon, c3o=c3o, roles=out_roles, aliases=aliases)
