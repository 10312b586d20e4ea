"""Omniglot few-shot ablation: one change at a time against the reference loop's settings.

Trains the reference loop's recipe (``../shared/reference/omniglot_plain_loop.py``: images in
memory, SGD one-cycle, per-batch shift) on our ResNet-18 with one setting changed, then scores the
same 400 within-alphabet 20-way 1-shot episodes under several feature/scoring variants (pooled c5,
centrings, c4, c4+c5, power transform, shift TTA, Hungarian assignment). It is the experiment
behind the choices in ``tasks/presets/omniglot_pretrain.yaml`` and ``fewshot-eval``'s defaults
(docs/benchmarks.md, "Few-shot"); ``bench_fewshot.py`` measures the shipped path itself.

    python benchmarks/fewshot_ablation.py --tag base                      # the reference's settings
    python benchmarks/fewshot_ablation.py --tag s48 --size 48 --epochs 10.7 --shift 3
"""
import argparse, glob, os, random, resource, time, json, math
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from PIL import Image
from resnet_backbones import create_backbone

p = argparse.ArgumentParser()
p.add_argument("--size", type=int, default=64)
p.add_argument("--epochs", type=float, default=6)
p.add_argument("--bs", type=int, default=64)
p.add_argument("--polarity", default="ref")  # ref | inv | inv0
p.add_argument("--opt", default="sgd")  # sgd (onecycle) | adamw
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--wd", type=float, default=5e-4)
p.add_argument("--ls", type=float, default=0.1)
p.add_argument("--head", default="linear")  # linear | cos | cosm
p.add_argument("--margin", type=float, default=0.1)
p.add_argument("--scale", type=float, default=10.0)
p.add_argument("--zero_init", type=int, default=0)
p.add_argument("--no_maxpool", type=int, default=0)
p.add_argument("--aug", default="shift")  # shift | none | affine
p.add_argument("--shift", type=int, default=4)
p.add_argument("--rot_classes", type=int, default=0)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--episodes", type=int, default=400)
p.add_argument("--tag", default="")
p.add_argument("--extra", type=int, default=0, help="1: also spatial c5 and shift-TTA features")
p.add_argument("--save", default="", help="write the trained weights here")
p.add_argument("--episodic", default="")  # "N,K,Q" prototypical training
p.add_argument("--proto_metric", default="cos")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed); np.random.seed(a.seed); random.seed(a.seed)
ROOT = os.environ.get("OMNIGLOT", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "omniglot"))
S = a.size

def cpu(): r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime

def load(path):
    x = np.asarray(Image.open(path).convert("L").resize((S, S), Image.BILINEAR), dtype=np.float32) / 255.0
    if a.polarity == "ref": x = (x - 0.5) / 0.5
    elif a.polarity == "inv": x = (0.5 - x) / 0.5
    elif a.polarity == "inv0": x = 1.0 - x
    return torch.from_numpy(x)[None].repeat(3, 1, 1)

train_classes = sorted(glob.glob(f"{ROOT}/images_background_small1/*/*"))
X = torch.stack([load(p) for c in train_classes for p in sorted(glob.glob(c + "/*.png"))])
Y = torch.tensor([i for i, c in enumerate(train_classes) for _ in sorted(glob.glob(c + "/*.png"))])
nc = len(train_classes)
if a.rot_classes:
    X = torch.cat([torch.rot90(X, k, (2, 3)) for k in range(4)]); Y = torch.cat([Y + k * nc for k in range(4)]); nc *= 4

bb = create_backbone("resnet18", weights=None, out_features=("c4", "c5"))
if a.no_maxpool: bb.maxpool = nn.Identity()
if a.zero_init:
    for m in bb.modules():
        if hasattr(m, "bn2") and not hasattr(m, "bn3"): nn.init.zeros_(m.bn2.weight)

class Cos(nn.Module):
    def __init__(s, d, n, scale, margin):
        super().__init__(); s.w = nn.Parameter(torch.randn(n, d) * 0.01); s.scale = nn.Parameter(torch.tensor(scale)); s.m = margin
    def forward(s, x, y=None):
        c = F.linear(F.normalize(x, dim=1), F.normalize(s.w, dim=1))
        if y is not None and s.m: c = c - s.m * F.one_hot(y, c.shape[1])
        return s.scale * c

class M(nn.Module):
    def __init__(s):
        super().__init__(); s.bb = bb
        s.head = nn.Linear(512, nc) if a.head == "linear" else Cos(512, nc, a.scale, a.margin if a.head == "cosm" else 0.0)
    def feat(s, x): return torch.flatten(F.adaptive_avg_pool2d(s.bb(x)["c5"], 1), 1)
    def forward(s, x, y=None):
        f = s.feat(x); return s.head(f) if a.head == "linear" else s.head(f, y)
model = M()
model.temp = nn.Parameter(torch.tensor(10.0))
steps_per_ep = (len(X) + a.bs - 1) // a.bs
total = int(round(a.epochs * steps_per_ep))
if a.opt == "sgd":
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=a.wd, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, a.lr, total_steps=total)
else:
    decay = [p for p in model.parameters() if p.ndim > 1]; nod = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": nod, "weight_decay": 0}], lr=a.lr)
    warm = max(1, int(0.1 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, 0.5 * (1 + math.cos(math.pi * min(1, (s - warm) / max(1, total - warm)))) if s >= warm else (s + 1) / warm))

def augment(xb):
    if a.aug == "shift":
        dx, dy = np.random.randint(-a.shift, a.shift + 1, 2)
        return torch.roll(xb, (int(dx), int(dy)), (2, 3))
    if a.aug == "affine":
        n = len(xb); ang = (torch.rand(n) * 2 - 1) * math.radians(10); sc = 1 + (torch.rand(n) * 2 - 1) * 0.1
        sh = (torch.rand(n) * 2 - 1) * 0.1; t = (torch.rand(n, 2) * 2 - 1) * (2 * a.shift / S)
        th = torch.zeros(n, 2, 3)
        th[:, 0, 0] = torch.cos(ang) / sc; th[:, 0, 1] = -torch.sin(ang) / sc + sh; th[:, 1, 0] = torch.sin(ang) / sc; th[:, 1, 1] = torch.cos(ang) / sc
        th[:, :, 2] = t
        g = F.affine_grid(th, xb.shape, align_corners=False)
        bg = xb[:, :, :1, :1]
        return F.grid_sample(xb - bg, g, padding_mode="zeros", align_corners=False) + bg
    return xb

t0, c0 = time.time(), cpu()
step = 0
model.train()
byc = [torch.nonzero(Y == c).flatten() for c in range(nc)]
temp = model.temp
def episode_batch():
    N, K, Q = map(int, a.episodic.split(","))
    cls = torch.randperm(nc)[:N]
    idx = torch.stack([byc[c][torch.randperm(len(byc[c]))[:K + Q]] for c in cls])  # N x (K+Q)
    return idx
while step < total:
    perm = torch.randperm(len(X)); correct = 0; seen = 0
    for i in range(0, len(X), a.bs):
        if step >= total: break
        if a.episodic:
            N, K, Q = map(int, a.episodic.split(","))
            idx2 = episode_batch(); idx = idx2.flatten()
            f = model.feat(augment(X[idx])).view(N, K + Q, -1)
            protos = f[:, :K].mean(1); qf = f[:, K:].reshape(N * Q, -1)
            if a.proto_metric == "cos":
                out = temp * F.normalize(qf, dim=1) @ F.normalize(protos, dim=1).T
            else:
                out = -torch.cdist(qf, protos) ** 2 / qf.shape[1]
            yb = torch.arange(N).repeat_interleave(Q)
            loss = F.cross_entropy(out, yb, label_smoothing=a.ls)
            opt.zero_grad(); loss.backward(); opt.step(); sched.step(); step += 1
            correct += (out.argmax(1) == yb).sum().item(); seen += len(yb)
            continue
        idx = perm[i:i + a.bs]
        xb = augment(X[idx]); yb = Y[idx]
        out = model(xb, yb) if a.head != "linear" else model(xb)
        loss = F.cross_entropy(out, yb, label_smoothing=a.ls)
        opt.zero_grad(); loss.backward(); opt.step(); sched.step(); step += 1
        correct += (out.argmax(1) == yb).sum().item(); seen += len(idx)
    print(f"step {step}/{total}: train acc {correct / max(1,seen):.3f} cpu {cpu()-c0:.0f}", flush=True)
train_cpu = cpu() - c0
if a.save:
    torch.save(model.state_dict(), a.save)

# ---- eval
model.eval()
seen_alpha = {os.path.basename(os.path.dirname(c)) for c in train_classes}
alphabets = [al for al in sorted(glob.glob(f"{ROOT}/images_background_small2/*")) if os.path.basename(al) not in seen_alpha and len(glob.glob(al + "/*")) >= 20]
files = sorted(p for al in alphabets for p in glob.glob(al + "/*/*.png"))
fidx = {p: i for i, p in enumerate(files)}
E = torch.stack([load(p) for p in files])
@torch.no_grad()
def feats(x, spatial=False, shifts=((0, 0),)):
    out = []
    for i in range(0, len(x), 256):
        xb = x[i:i + 256]; acc = 0
        for dx, dy in shifts:
            xs = torch.roll(xb, (dx, dy), (2, 3)) if (dx or dy) else xb
            o = model.bb(xs); c5 = o["c5"]
            if spatial == "c4": v = o["c4"].mean((2, 3))
            elif spatial == "c45": v = torch.cat([F.normalize(o["c4"].mean((2, 3)), dim=1), F.normalize(c5.mean((2, 3)), dim=1)], 1)
            elif spatial: v = torch.flatten(c5, 1)
            else: v = c5.mean((2, 3))
            acc = acc + v
        out.append(acc / len(shifts))
    return torch.cat(out)
c1 = cpu()
F0 = feats(E)
eval_cpu = cpu() - c1
Xb = X[:2720] if a.rot_classes else X
with torch.no_grad():
    base = feats(Xb).mean(0)
rng = random.Random(0)
eps = []
for _ in range(a.episodes):
    chars = rng.sample(sorted(glob.glob(rng.choice(alphabets) + "/*")), 20)
    pairs = [rng.sample(sorted(glob.glob(c + "/*.png")), 2) for c in chars]
    eps.append(([fidx[s] for s, _ in pairs], [fidx[q] for _, q in pairs]))

def score(Fm, mode="cos"):
    errs = []
    for s, q in eps:
        fs, fq = Fm[s].clone(), Fm[q].clone()
        if mode.startswith("pt"): fs, fq = fs.clamp(min=0).sqrt(), fq.clamp(min=0).sqrt()
        if mode == "ptsup": m = fs.mean(0); fs, fq = fs - m, fq - m
        if mode == "base": fs, fq = fs - base, fq - base
        elif mode == "sup": m = fs.mean(0); fs, fq = fs - m, fq - m
        elif mode == "epi": m = torch.cat([fs, fq]).mean(0); fs, fq = fs - m, fq - m
        sim = F.normalize(fq, dim=1) @ F.normalize(fs, dim=1).T
        if mode == "hung":
            from scipy.optimize import linear_sum_assignment
            r, c = linear_sum_assignment(-sim.numpy()); pred = torch.tensor(c)
        else:
            pred = sim.argmax(1)
        errs.append(pred.ne(torch.arange(20)).float().mean().item())
    e = 100 * np.array(errs); return e.mean(), 1.96 * e.std(ddof=1) / np.sqrt(len(e))
res = {k: score(F0, k) for k in ("cos", "base", "sup", "epi", "pt", "ptsup")}
F4 = feats(E, spatial="c4"); F45 = feats(E, spatial="c45")
res["c4"] = score(F4, "cos"); res["c4_sup"] = score(F4, "sup"); res["c45"] = score(F45, "cos"); res["c45_sup"] = score(F45, "sup")
if a.extra:
    Fsp = feats(E, spatial=True)
    Ftta = feats(E, shifts=((0, 0), (2, 0), (-2, 0), (0, 2), (0, -2)))
    res["spatial"] = score(Fsp, "cos"); res["spatial_sup"] = score(Fsp, "sup")
    res["tta"] = score(Ftta, "cos"); res["tta_sup"] = score(Ftta, "sup"); res["tta_base"] = score(Ftta - 0, "base")
try:
    res["hung"] = score(F0, "hung")
except ImportError: pass
print("RESULT", json.dumps({"args": vars(a), "train_cpu": round(train_cpu), "eval_cpu": round(eval_cpu, 1), "wall": round(time.time() - t0),
      **{k: f"{v[0]:.1f}±{v[1]:.1f}" for k, v in res.items()}}), flush=True)
