"""DistributedDataParallel on CPU (gloo over loopback): because TP writes its direction into
``.grad``, DDP's all-reduce (a mean over ranks) gives the same update as one process on the
whole batch. Two spawned processes (once, for every rule) against one, bounded in time.

For the rules whose step back in time is not linear in the displacement (difference, learned) this
holds because each process scales its injection by its share of the batch (engine.injection_scale);
the learned rule's reverse layer takes the step averaged over the processes."""
import pytest
import torch

from processes import max_rel_diff, spawn
from targetprop import TPRNN, orthogonal_init_

STEPS, B, T, D, P = 5, 8, 12, 3, 10
RULES = ["linearized", "bp", "difference", "learned"]


def _model(rule):
    torch.manual_seed(0)
    noise = {"inverse_noise": 0.0} if rule == "learned" else {}  # each process draws its own noise
    rnn = orthogonal_init_(TPRNN(D, P, batch_first=True, rule=rule, reg=1.0, target_step=0.1, **noise),
                           torch.Generator().manual_seed(0))
    return torch.nn.ModuleDict({"rnn": rnn, "head": torch.nn.Linear(P, 4)}).double()


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, B, T, D, generator=g, dtype=torch.float64), torch.randint(0, 4, (STEPS, B), generator=g)


def _train(model, xs, ys, wrap):
    """SGD with momentum on a mean cross-entropy; returns the final state dict."""
    net = wrap(_Net(model))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, y in zip(xs, ys):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _Net(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner["head"](self.inner["rnn"](x)[1][0])


def _worker(rank, world, paths):
    xs, ys = _data()
    shard = slice(rank * B // world, (rank + 1) * B // world)  # disjoint shards of every batch
    for rule, path in paths.items():
        params = _train(_model(rule), xs[:, shard], ys[:, shard], wrap=torch.nn.parallel.DistributedDataParallel)
        if rank == 0:
            torch.save(params, path)


@pytest.fixture(scope="module")
def ddp_parameters(tmp_path_factory):
    """Each rule's parameters after training in two processes (one spawn for all rules)."""
    folder = tmp_path_factory.mktemp("ddp")
    paths = {rule: str(folder / f"{rule}.pt") for rule in RULES}
    spawn(_worker, paths)
    return {rule: torch.load(path) for rule, path in paths.items()}


@pytest.mark.parametrize("rule", RULES)
def test_ddp_two_processes_equal_one_process(rule, ddp_parameters):
    xs, ys = _data()
    single = _train(_model(rule), xs, ys, wrap=lambda net: net)
    worst = max_rel_diff(ddp_parameters[rule], single)
    print(f"DDP ({rule}): max relative parameter difference, 2 processes vs 1: {worst:.2e}")
    # the difference formula subtracts two nearly equal inverses (a⁻¹(π(h+λ)) − a⁻¹(π(h))), which turns
    # the last-bit differences of the two runs' loss gradients into relative ones of about 1e-11
    assert worst < (1e-9 if rule == "difference" else 1e-12), worst
    moved = (single["rnn.weight_hh_l0"] - _model(rule).state_dict()["rnn.weight_hh_l0"]).abs().max()
    assert moved > 1e-4  # the recurrent weights really trained
