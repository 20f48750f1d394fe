import pytest
import torch
import torch.multiprocessing as mp

import research.tokenizer.quantizer as quantizer_module
from research.tokenizer.distillation import align_to_frames, d_axis_loss, t_axis_loss
from research.tokenizer.quantizer import (
    EMACodebook,
    ResidualVQ,
    SplitResidualVQ,
    kmeans,
    kmeans_plus_plus,
    nearest,
    nearest_codes,
    squared_distances,
)


def test_nearest_codes_matches_brute_force_in_chunks():
    torch.manual_seed(0)
    x, codebook = torch.randn(1000, 8), torch.randn(50, 8)
    brute = torch.cdist(x, codebook).argmin(-1)
    assert torch.equal(nearest_codes(x, codebook, chunk=64), brute)


def test_matmul_distances_equal_direct_distances():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 40, generator=generator, dtype=torch.float64) * 3 + 1
    y = torch.randn(70, 40, generator=generator, dtype=torch.float64)
    direct = (x[:, None] - y[None]).pow(2).sum(-1)
    assert torch.allclose(squared_distances(x, y), direct, rtol=1e-10, atol=1e-10)
    indices, distances = nearest(x, y, chunk=64)
    assert torch.equal(indices, direct.argmin(-1))
    assert torch.allclose(distances, direct.min(-1).values, rtol=1e-10, atol=1e-10)


def test_seeding_picks_k_distinct_rows():
    generator = torch.Generator().manual_seed(0)
    samples = torch.randn(500, 96, generator=generator)  # wider than the 64-d projection
    picks = kmeans_plus_plus(samples, 100, generator=torch.Generator().manual_seed(1))
    assert picks.shape == (100,) and len(set(picks.tolist())) == 100
    # 40 distinct rows, each 5 times: the 40 first, then rows not chosen yet (never a chosen one again)
    repeated = torch.randn(40, 8, generator=generator).repeat(5, 1)
    picks = kmeans_plus_plus(repeated, 60, generator=torch.Generator().manual_seed(1))
    assert len(set(picks.tolist())) == 60 and set((picks[:40] % 40).tolist()) == set(range(40))
    # fewer frames than codes (a short first batch): every frame once, then repeats
    picks = kmeans_plus_plus(samples[:10], 16, generator=torch.Generator().manual_seed(1))
    assert set(picks[:10].tolist()) == set(range(10)) and picks.max() < 10


def test_seeding_spreads_over_separated_clusters():
    """Greedy k-means++ puts one seed in each of k far-apart clusters, even small ones next to a big one."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 100, generator=generator) * 20
    sizes = [400, 10, 10, 10, 10, 10, 10, 10]
    samples = torch.cat(
        [c + torch.randn(n, 100, generator=generator) for c, n in zip(centres, sizes, strict=True)]
    )
    seeds = samples[kmeans_plus_plus(samples, 8, generator=torch.Generator().manual_seed(3))]
    assert sorted(torch.cdist(seeds, centres).argmin(-1).tolist()) == list(range(8))


def test_lloyd_with_tolerance_stops_early_and_recovers_centres(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 80, generator=generator) * 10
    samples = torch.cat([c + 0.1 * torch.randn(100, 80, generator=generator) for c in centres])
    assignments = []
    monkeypatch.setattr(
        quantizer_module, "nearest", lambda *a, **k: assignments.append(1) or nearest(*a, **k)
    )
    found, counts = kmeans(samples, 5, iters=50, tolerance=1e-2, generator=torch.Generator().manual_seed(1))
    # seeds, one update to the cluster means, one assignment that changes nothing: stop
    assert len(assignments) <= 3
    assert counts.tolist() == [100.0] * 5
    means = samples.view(5, 100, 80).mean(1)  # each cluster's mean, to rounding
    assert torch.cdist(means, found).min(-1).values.max() < 1e-4


def reference_kmeans(samples: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """The initialisation the RVQ used before: plain k-means++ (one draw per step), then `iters` Lloyd steps."""
    picks = [int(torch.randint(len(samples), (1,), generator=generator))]
    nearest_sq = (samples - samples[picks[0]]).pow(2).sum(-1)
    for _ in range(1, k):
        picks.append(int(torch.multinomial(nearest_sq, 1, generator=generator)))
        nearest_sq = torch.minimum(nearest_sq, (samples - samples[picks[-1]]).pow(2).sum(-1))
    centroids = samples[picks].clone()
    for _ in range(iters):
        assign = torch.cdist(samples, centroids).argmin(-1)
        for j in range(k):
            if (assign == j).any():
                centroids[j] = samples[assign == j].mean(0)
    return centroids


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantization_error_not_worse_than_plain_kmeans_plus_plus(seed):
    """Clusters of uneven size and spread, fewer codes than clusters: the RVQ's setting (greedy seeds, Lloyd to
    a 1% tolerance) ends at no higher mean squared distance than plain k-means++ with 50 Lloyd steps."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(48, 96, generator=generator) * 2
    spread = torch.rand(48, generator=generator) * 1.5 + 0.25
    labels = torch.multinomial(torch.rand(48, generator=generator) + 0.2, 2000, True, generator=generator)
    samples = centres[labels] + spread[labels, None] * torch.randn(2000, 96, generator=generator)
    old = reference_kmeans(samples, 32, 50, torch.Generator().manual_seed(seed))
    new, _ = kmeans(samples, 32, iters=50, tolerance=1e-2, generator=torch.Generator().manual_seed(seed))
    assert nearest(samples, new)[1].mean() <= nearest(samples, old)[1].mean()


def test_kmeans_and_codebook_init_are_deterministic_under_a_seed():
    samples = torch.randn(400, 72, generator=torch.Generator().manual_seed(0))

    def fit(seed: int) -> torch.Tensor:
        return kmeans(samples, 20, iters=10, generator=torch.Generator().manual_seed(seed))[0]

    assert torch.equal(fit(1), fit(1)) and not torch.equal(fit(1), fit(2))

    def init(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)  # init_from draws from the global RNG; DDP ranks then take rank 0's result
        book = EMACodebook(dim=72, size=20, kmeans_iters=10)
        book.init_from(samples)
        return book.embed

    assert torch.equal(init(5), init(5)) and not torch.equal(init(5), init(6))


def test_kmeans_finds_separated_clusters():
    torch.manual_seed(0)
    centers = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    samples = torch.cat([c + 0.1 * torch.randn(200, 2) for c in centers])
    found, counts = kmeans(samples, 3, iters=10, generator=torch.Generator().manual_seed(1))
    assert sorted(counts.tolist()) == [200, 200, 200]
    assert torch.cdist(centers, found).min(-1).values.max() < 0.1


def test_kmeans_keeps_its_precision_far_from_the_origin():
    """Clusters 0.2 apart around a point at distance 4,000: float32's ||x||^2 - 2 x.c + ||c||^2 would lose the
    distances to rounding (||x||^2 = 1.6e7), so k-means works on centred samples."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.1, 0.0], [-0.1, 0.0], [0.0, 0.1], [0.0, -0.1]]).repeat(1, 8) + 1000.0
    samples = torch.cat([c + 0.005 * torch.randn(50, 16, generator=generator) for c in centres])
    found, counts = kmeans(samples, 4, iters=10, generator=torch.Generator().manual_seed(1))
    assert counts.tolist() == [50.0] * 4
    assert torch.cdist(centres.double(), found.double()).min(-1).values.max() < 0.01


def test_ema_update_matches_hand_computation():
    book = EMACodebook(dim=2, size=2, decay=0.5, epsilon=0.0, dead_threshold=0.0)
    book.embed.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    book.cluster_size.copy_(torch.tensor([2.0, 2.0]))
    book.embed_sum.copy_(book.embed * 2)
    frames = torch.tensor([[1.0, 1.0], [3.0, 1.0], [9.0, 9.0]])
    book.ema_update(frames, torch.tensor([0, 0, 1]))
    # cluster_size = 0.5*2 + 0.5*[2, 1] = [2, 1.5]; embed_sum = 0.5*[[0,0],[20,20]] + 0.5*[[4,2],[9,9]]
    assert torch.allclose(book.cluster_size, torch.tensor([2.0, 1.5]))
    assert torch.allclose(book.embed_sum, torch.tensor([[2.0, 1.0], [14.5, 14.5]]))
    assert torch.allclose(book.embed, torch.tensor([[1.0, 0.5], [14.5 / 1.5, 14.5 / 1.5]]))


def test_ema_laplace_smoothing_by_hand():
    book = EMACodebook(dim=1, size=2, decay=0.5, epsilon=0.5, dead_threshold=0.0)
    book.cluster_size.copy_(torch.tensor([2.0, 2.0]))
    book.embed_sum.copy_(torch.tensor([[4.0], [2.0]]))
    book.ema_update(torch.tensor([[6.0], [2.0]]), torch.tensor([0, 0]))
    # cluster_size [2, 1], embed_sum 0.5*[4, 2] + 0.5*[8, 0] = [6, 1]; smoothed = (n + 0.5) / (3 + 2 * 0.5) * 3 = [1.875, 1.125]
    assert torch.allclose(book.cluster_size, torch.tensor([2.0, 1.0]))
    assert torch.allclose(book.embed[:, 0], torch.tensor([6.0 / 1.875, 1.0 / 1.125]))


def test_dead_codes_are_replaced_by_batch_frames():
    book = EMACodebook(dim=4, size=8, dead_threshold=2.0)
    book.cluster_size.copy_(torch.tensor([5.0, 5, 0, 0, 5, 5, 5, 1]))
    frames = torch.randn(100, 4)
    live = book.embed[[0, 1, 4, 5, 6]].clone()
    assert book.replace_dead_codes(frames) == 3
    replaced = book.embed[[2, 3, 7]]
    assert all((frames == row).all(-1).any() for row in replaced)
    assert torch.equal(book.embed[[0, 1, 4, 5, 6]], live)  # live codes untouched
    # a replaced code restarts at the threshold, its EMA sum consistent with it (embed = sum / size)
    assert torch.equal(book.cluster_size, torch.tensor([5.0, 5, 2, 2, 5, 5, 5, 2]))
    assert torch.equal(book.embed_sum[[2, 3, 7]], replaced * 2)
    assert book.replace_dead_codes(frames) == 0  # none left below the threshold


def test_rvq_shapes_per_level_sizes_and_reconstruction():
    torch.manual_seed(0)
    rvq = ResidualVQ(dim=8, codebook_sizes=[64, 16, 4], kmeans_iters=5)
    x = torch.randn(3, 8, 40)
    out = rvq(x)
    assert out.quantized.shape == x.shape and out.codes.shape == (3, 3, 40) and len(out.levels) == 3
    assert all(int(out.codes[i].max()) < size for i, size in enumerate([64, 16, 4]))
    rvq.eval()
    codes = rvq.encode(x)
    errors = [(rvq.decode(codes[:k]) - x).pow(2).mean() for k in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]  # every level removes part of the residual
    # by hand: each level's code is the nearest entry to what the previous levels left
    residual, expected = x.transpose(1, 2), []
    for codebook in rvq.codebooks:
        expected.append(torch.cdist(residual, codebook.embed[None]).argmin(-1))
        residual = residual - codebook.embed[expected[-1]]
    assert torch.equal(codes, torch.stack(expected))
    out = rvq(x)
    assert torch.equal(out.codes, codes)
    assert torch.allclose(out.quantized, rvq.decode(codes), atol=1e-6)


def test_residual_comes_from_the_code_so_later_levels_train_the_encoder():
    """EnCodec issue 25: with the residual taken from the straight-through output, the commitment loss of
    level 2 has no gradient to the encoder output; taken from the code value, it does. By hand: the loss is
    (mse(x, c1) + mse(x - c1, c2)) / 2 with codes c1, c2 constant, so its gradient is (2x - 2c1 - c2) / numel."""
    torch.manual_seed(0)
    rvq = ResidualVQ(dim=4, codebook_sizes=[16, 16], kmeans_iters=2)
    rvq(torch.randn(2, 4, 30))  # initialise codebooks
    x = torch.randn(2, 4, 30, requires_grad=True)
    rvq.eval()
    out = rvq(x)
    c1, c2 = (
        book.decode(codes).transpose(1, 2) for book, codes in zip(rvq.codebooks, out.codes, strict=True)
    )
    expected_loss = ((x - c1).pow(2).mean() + (x - c1 - c2).pow(2).mean()) / 2
    assert torch.allclose(out.commitment_loss, expected_loss)
    (grad,) = torch.autograd.grad(out.commitment_loss, x)
    assert torch.allclose(grad, (2 * x - 2 * c1 - c2).detach() / x.numel(), atol=1e-7)


def test_quantizer_dropout_uses_a_prefix_of_levels():
    torch.manual_seed(0)
    rvq = ResidualVQ(dim=4, codebook_sizes=[8] * 4, quantizer_dropout=1.0, kmeans_iters=1)
    rvq(torch.randn(1, 4, 20), n_q=4)  # initialise every level (n_q=4 is the maximum, dropout may still cut)
    while not all(bool(book.initialized) for book in rvq.codebooks):
        rvq(torch.randn(1, 4, 20))
    used = set()
    for _ in range(40):
        x = torch.randn(1, 4, 20)
        rvq.eval()
        full = rvq.encode(x)  # before this step's EMA update
        rvq.train()
        codes = rvq(x).codes
        used.add(codes.shape[0])
        assert torch.equal(codes, full[: codes.shape[0]])  # the first levels, as they code without dropout
    assert used == {1, 2, 3, 4}
    rvq.eval()
    assert rvq(torch.randn(1, 4, 20)).codes.shape[0] == 4


def dropout_levels(rvq: ResidualVQ, steps: int, global_seed: int) -> list[int]:
    levels = []
    for step in range(steps):
        torch.manual_seed(global_seed + step)  # the global RNG differs, as on different DDP ranks
        levels.append(rvq(torch.randn(1, 4, 10)).codes.shape[0])
    return levels


@pytest.mark.parametrize("quantizer", [ResidualVQ, SplitResidualVQ])
def test_quantizer_dropout_draws_the_same_levels_on_every_rank(quantizer):
    """Ranks seed the global RNG alike or not, and consume it differently (k-means, dead codes); the number of
    levels must match anyway, or ranks would all-reduce different codebooks."""

    def make() -> torch.nn.Module:
        return quantizer(dim=4, codebook_sizes=[8] * 4, quantizer_dropout=0.5, dropout_seed=7, kmeans_iters=1)

    rank0, rank1 = make(), make()
    levels = dropout_levels(rank0, 20, global_seed=0)
    assert levels == dropout_levels(rank1, 20, global_seed=1000)
    assert 4 in levels and len(set(levels)) > 2  # dropped in some steps, not in others
    other_seed = quantizer(
        dim=4, codebook_sizes=[8] * 4, quantizer_dropout=0.5, dropout_seed=8, kmeans_iters=1
    )
    assert dropout_levels(other_seed, 20, global_seed=0) != levels
    # a quantizer restored from a checkpoint continues the sequence
    resumed = make()
    resumed.load_state_dict(rank0.state_dict())
    assert dropout_levels(resumed, 10, global_seed=5) == dropout_levels(rank0, 10, global_seed=9)
    # checkpoints from before the draw counter still load
    old = {k: v for k, v in rank0.state_dict().items() if not k.endswith("dropout_draws")}
    make().load_state_dict(old)


def test_split_rvq_semantic_level_is_parallel_not_residual():
    torch.manual_seed(0)
    split = SplitResidualVQ(dim=8, codebook_sizes=[32, 16, 16], kmeans_iters=2)
    x = torch.randn(2, 8, 25)
    out = split(x)
    assert out.codes.shape == (3, 2, 25) and out.quantized.shape == x.shape
    split.eval()
    # the acoustic codes do not depend on the semantic codebook: changing it leaves them as they were
    before = split.encode(x)
    split.semantic.codebooks[0].embed.mul_(3.0)
    after = split.encode(x)
    assert torch.equal(before[1:], after[1:]) and not torch.equal(before[:1], after[:1])


def _ddp_worker(rank: int, init_file: str, result_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(100 + rank)  # every rank sees different data and draws different random numbers
    rvq = ResidualVQ(dim=6, codebook_sizes=[32, 8], kmeans_iters=3, dead_threshold=2.0)
    for _ in range(5):
        rvq(torch.randn(4, 6, 30) * (1 + rank))
    torch.save({k: v for k, v in rvq.state_dict().items()}, f"{result_file}.{rank}")
    dist.destroy_process_group()


def test_codebooks_stay_identical_across_ddp_ranks(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path / "state")), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"state.{r}") for r in range(2))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key


def test_d_axis_loss_by_hand():
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (B=1, T=2, D=2)
    teacher = torch.tensor([[[2.0, 0.0], [0.0, -3.0]]])
    # dim 0 over time: (1,0)·(2,0) -> cos 1; dim 1: (0,1)·(0,-3) -> cos -1
    expected = (
        -(torch.log(torch.sigmoid(torch.tensor(1.0))) + torch.log(torch.sigmoid(torch.tensor(-1.0)))) / 2
    )
    assert torch.isclose(d_axis_loss(student, teacher), expected)


def test_t_axis_loss_by_hand():
    student = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    teacher = torch.tensor([[[1.0, 0.0], [-1.0, -1.0]]])
    l1 = (0 + 0 + 2 + 2) / 4
    cos_term = (
        -(torch.log(torch.sigmoid(torch.tensor(1.0))) + torch.log(torch.sigmoid(torch.tensor(-1.0)))) / 2
    )
    assert torch.isclose(t_axis_loss(student, teacher), l1 + cos_term)


def test_teacher_features_are_aligned_to_codec_frames():
    features = torch.arange(8.0).reshape(1, 8, 1)
    assert align_to_frames(features, 8) is features
    half = align_to_frames(features, 4)
    assert half.shape == (1, 4, 1)
    assert torch.allclose(half[0, :, 0], torch.tensor([0.5, 2.5, 4.5, 6.5]))


@pytest.mark.parametrize("loss", [d_axis_loss, t_axis_loss])
def test_distillation_losses_fall_to_their_minimum_when_matched(loss):
    teacher = torch.randn(2, 10, 4)
    minimum = -torch.log(torch.sigmoid(torch.tensor(1.0)))  # cosine 1, zero L1
    assert torch.isclose(loss(teacher, teacher), minimum)
    assert torch.isclose(loss(3 * teacher, teacher), minimum) == (loss is d_axis_loss)  # D-axis: scale-free
    assert torch.isclose(
        loss(-teacher, teacher),
        -torch.log(torch.sigmoid(torch.tensor(-1.0)))
        + (2 * teacher.abs().mean() if loss is t_axis_loss else 0),
    )
