"""The optional GRPO extra: mistakes students make, and correct variants."""

EXERCISE = "extra_grpo"

DEPENDS = {
    "extra_grpo_adv": ["extra_grpo_adv_tests"],
    "extra_grpo_zero": ["extra_grpo_zero_tests"],
    "extra_grpo_loss": ["extra_grpo_loss_tests"],
}

_ADV = '''
def grpo_advantages(rewards, group_size, scale="group", eps=1e-4):
    if scale not in ("group", "batch", "none"):
        raise ValueError("unknown scale")
    if SIZE_CHECK:
        raise ValueError("group_size must be an integer >= 2")
    r = np.asarray(rewards, dtype=float).reshape(-1)
    if r.size == 0 or r.size % int(group_size):
        raise ValueError("not whole groups")
    g = r.reshape(-1, int(group_size))
    adv = g - MEAN
    if scale == "group":
        adv = adv / (GROUP_STD)
    elif scale == "batch":
        adv = adv / (BATCH_STD)
    return adv.reshape(-1)
'''


def _adv(size="int(group_size) != group_size or group_size < 2", mean="g.mean(axis=1, keepdims=True)",
         group_std="g.std(axis=1, ddof=1, keepdims=True) + eps", batch_std="r.std(ddof=1) + eps"):
    return (_ADV.replace("SIZE_CHECK", size).replace("MEAN", mean).replace("GROUP_STD", group_std)
            .replace("BATCH_STD", batch_std))


_ZERO = '''
def frac_zero_std(rewards, group_size):
    if int(group_size) != group_size or group_size < 2:
        raise ValueError("group_size must be an integer >= 2")
    r = np.asarray(rewards, dtype=float).reshape(-1)
    if r.size == 0 or r.size % int(group_size):
        raise ValueError("not whole groups")
    g = r.reshape(-1, int(group_size))
    return float(np.mean(COND))
'''

_LOSS = '''
def clipped_grpo_loss(logp, old_logp, advantages, mask, clip_eps=0.2):
    if logp.shape != old_logp.shape or logp.shape != mask.shape or advantages.shape != logp.shape[:1]:
        raise ValueError("shapes disagree")
    m = mask.to(logp.dtype)
    n = m.sum(-1)
    if bool((n == 0).any()):
        raise ValueError("a row has no response token")
    ratio = torch.exp((logp - old_logp) * m)
    a = advantages.to(logp.dtype)[:, None]
    per_token = PER_TOKEN
    return REDUCE
'''


def _loss(per_token="-torch.min(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)",
          reduce="((per_token * m).sum(-1) / n).mean()"):
    return _LOSS.replace("PER_TOKEN", per_token).replace("REDUCE", reduce)


ENTRIES = [
    # ---- group advantages
    dict(cell="extra_grpo_adv", kind="mistake", name="population std (divides by G, not G - 1)",
         source=_adv(group_std="g.std(axis=1, keepdims=True) + eps", batch_std="r.std() + eps")),
    dict(cell="extra_grpo_adv", kind="mistake", name="subtracts the batch mean, not each group's",
         source=_adv(mean="r.mean()")),
    dict(cell="extra_grpo_adv", kind="mistake", name="no eps: a group of equal rewards divides 0 by 0",
         source=_adv(group_std="g.std(axis=1, ddof=1, keepdims=True)")),
    dict(cell="extra_grpo_adv", kind="mistake", name="scale='batch' still divides by the group's std",
         source=_adv(batch_std="g.std(axis=1, ddof=1, keepdims=True) + eps")),
    dict(cell="extra_grpo_adv", kind="mistake", name="accepts a group of one",
         source=_adv(size="group_size < 1")),
    dict(cell="extra_grpo_adv", kind="correct", name="torch in float32, back to numpy", tags=("torch", "float32"), source='''
def grpo_advantages(rewards, group_size, scale="group", eps=1e-4):
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"unknown scale {scale!r}")
    if not isinstance(group_size, int) or group_size < 2:
        raise ValueError("group_size must be an integer >= 2")
    r = torch.tensor(np.asarray(rewards, dtype=float).reshape(-1), dtype=torch.float32)
    if r.numel() == 0 or r.numel() % group_size:
        raise ValueError("the rewards do not make whole groups")
    g = r.view(-1, group_size)
    adv = g - g.mean(dim=1, keepdim=True)
    if scale == "group":
        adv = adv / (g.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        adv = adv / (r.std() + eps)
    return adv.reshape(-1).numpy()
'''),
    dict(cell="extra_grpo_adv", kind="correct", name="a loop over groups with the statistics module", tags=("loops",), source='''
import statistics


def grpo_advantages(rewards, group_size, scale="group", eps=1e-4):
    if scale not in ("group", "batch", "none"):
        raise ValueError("unknown scale")
    if isinstance(group_size, bool) or group_size != int(group_size) or group_size < 2:
        raise ValueError("group_size must be an integer >= 2")
    r = [float(x) for x in rewards]
    if not r or len(r) % group_size:
        raise ValueError("not whole groups")
    batch_sd = statistics.stdev(r)
    out = []
    for start in range(0, len(r), group_size):
        grp = r[start:start + group_size]
        mu = sum(grp) / len(grp)
        sd = statistics.stdev(grp) if scale == "group" else batch_sd
        for x in grp:
            out.append((x - mu) / (sd + eps) if scale != "none" else x - mu)
    return np.array(out)
'''),
    # ---- groups without signal
    dict(cell="extra_grpo_zero", kind="mistake", name="exact equality: a 1e-12 difference counts as signal",
         source=_ZERO.replace("COND", "g.std(axis=1) == 0")),
    dict(cell="extra_grpo_zero", kind="mistake", name="counts the groups that do carry signal",
         source=_ZERO.replace("COND", "g.max(axis=1) - g.min(axis=1) > 1e-8")),
    dict(cell="extra_grpo_zero", kind="mistake", name="counts rewards, not groups, that equal their group's first",
         source=_ZERO.replace("COND", "np.abs(g - g[:, :1]) <= 1e-8")),
    dict(cell="extra_grpo_zero", kind="correct", name="np.ptp, vectorized", tags=("vectorized", "numpy"),
         source=_ZERO.replace("COND", "np.ptp(g, axis=1) <= 1e-8")),
    # ---- the clipped loss
    dict(cell="extra_grpo_loss", kind="mistake", name="a mean over all response tokens of the batch (BNPO), not per response",
         source=_loss(reduce="(per_token * m).sum() / m.sum()")),
    dict(cell="extra_grpo_loss", kind="mistake", name="no clip: the plain ratio times the advantage",
         source=_loss(per_token="-(ratio * a)")),
    dict(cell="extra_grpo_loss", kind="mistake", name="max instead of min (the pessimistic bound turned optimistic)",
         source=_loss(per_token="-torch.max(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)")),
    dict(cell="extra_grpo_loss", kind="mistake", name="padding counted: a mean over all T positions",
         source=_loss(reduce="per_token.mean()")),
    dict(cell="extra_grpo_loss", kind="correct", name="torch.where on the padding, computed in float64", tags=("torch",), source='''
def clipped_grpo_loss(logp, old_logp, advantages, mask, clip_eps=0.2):
    if not (logp.shape == old_logp.shape == mask.shape) or advantages.shape != logp.shape[:1]:
        raise ValueError("logp, old_logp, mask must be (B, T) and advantages (B,)")
    keep = mask > 0
    if bool((keep.sum(-1) == 0).any()):
        raise ValueError("a row has no response token")
    lr = torch.where(keep, logp.double() - old_logp.double(), torch.zeros((), dtype=torch.float64))
    ratio = lr.exp()
    a = advantages.double().unsqueeze(1)
    obj = torch.minimum(ratio * a, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * a)
    per_row = torch.where(keep, -obj, torch.zeros((), dtype=torch.float64)).sum(1) / keep.sum(1)
    return per_row.mean().to(logp.dtype)
'''),
]
