import itertools
import math

import pytest
import torch

from gconv_ext.groups import CyclicGroup, DihedralGroup, Group, group_from_name

from tolerances import F64, gamma, unit_roundoff

GROUPS = [Group(n, r) for r in (False, True) for n in (1, 2, 3, 4, 5, 6, 8)]


@pytest.mark.parametrize("g", GROUPS, ids=str)
def test_group_axioms(g):
    n = g.order
    table = g.cayley_table
    assert table.shape == (n, n)
    for a in range(n):
        assert g.compose(0, a) == a == g.compose(a, 0)
        assert g.compose(a, g.inverse(a)) == 0 == g.compose(g.inverse(a), a)
        assert sorted(table[a].tolist()) == list(range(n))  # Latin square
    for a, b, c in itertools.product(range(n), repeat=3):
        assert g.compose(g.compose(a, b), c) == g.compose(a, g.compose(b, c))


@pytest.mark.parametrize("g", GROUPS, ids=str)
def test_matrices_are_a_representation(g):
    # each entry is cos or sin of 2 pi r / N (|.| <= 1): the angle carries <= 3 roundings of a value <= 2 pi
    # and the libm result <= 1 ulp, so an entry errs by e <= (6 pi + 2) u; a product entry sums 2 terms:
    # 2 e + gamma_2 * 2, against e for the composed element's own matrix
    e = (6 * math.pi + 2) * unit_roundoff(F64)
    atol = 3 * e + 2 * gamma(2, F64)
    for a, b in itertools.product(range(g.order), repeat=2):
        torch.testing.assert_close(g.matrix(g.compose(a, b)), g.matrix(a) @ g.matrix(b), atol=atol, rtol=0)
    assert torch.equal(g.matrix(0), torch.eye(2, dtype=torch.float64))  # exact: the identity is special-cased


def test_conventions_on_images():
    x = torch.randn(2, 7, 7)
    c4, d4 = CyclicGroup(4), DihedralGroup(4)
    # exact: quarter turns and flips are permutations of the pixels
    assert torch.equal(c4.act_on_plane(1, x), torch.rot90(x, 1, dims=(-2, -1)))
    assert torch.equal(d4.act_on_plane(d4.index(1, 0), x), torch.flip(x, dims=(-1,)))
    # R_1 F: first flip, then rotate
    assert torch.equal(d4.act_on_plane(d4.index(1, 1), x), torch.rot90(torch.flip(x, dims=(-1,)), 1, dims=(-2, -1)))
    # counter-clockwise: the top-right corner moves to the top-left
    e = torch.zeros(3, 3)
    e[0, 2] = 1
    assert c4.act_on_plane(1, e)[0, 0] == 1


@pytest.mark.parametrize("g", [Group(4), Group(4, True), Group(3, True)], ids=str)
def test_action_on_feature_maps_is_a_representation(g):
    x = torch.randn(2, 3, g.order, 9, 9, dtype=torch.float64)
    for a, b in itertools.product(range(g.order), repeat=2):
        lhs = g.act(a, g.act(b, x))
        rhs = g.act(g.compose(a, b), x)
        if 4 % g.rotations == 0:
            assert torch.equal(lhs, rhs)  # permutations compose exactly
        else:  # interpolated rotations compose only approximately; the group axis must still match
            assert torch.equal(lhs[..., 4, 4], rhs[..., 4, 4])


def test_regular_permutation():
    g = DihedralGroup(3)
    x = torch.arange(6.0).view(1, 1, 6, 1, 1).expand(1, 1, 6, 3, 3)
    for a in range(6):
        y = g.act_on_group_axis(a, x)
        for h in range(6):
            assert y[0, 0, g.compose(a, h), 0, 0] == x[0, 0, h, 0, 0]
        assert torch.equal(g.regular_permutation(a), g.cayley_table[a])


def test_names_and_equality():
    assert group_from_name("C4") == Group(4) == CyclicGroup(4)
    assert group_from_name("d8") == DihedralGroup(8)
    assert group_from_name(Group(3)) is not None
    assert len(DihedralGroup(5)) == 10 and DihedralGroup(5).name == "D5"
    assert hash(Group(4, True)) == hash(DihedralGroup(4))
    assert Group(2).angle(1) == math.pi  # exact: 2 pi * 1 / 2 only scales by powers of 2


@pytest.mark.parametrize("bad", ["X4", "C", "C0", 4, None, "D-1"])
def test_bad_names(bad):
    with pytest.raises(ValueError, match="group"):
        group_from_name(bad)


@pytest.mark.parametrize("args", [(0,), (-1,), (2.5,), (True,), (4, 1)])
def test_bad_constructor(args):
    with pytest.raises(ValueError, match="rotations|reflections"):
        Group(*args)


def test_bad_elements():
    g = CyclicGroup(4)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        g.compose(0, 4)
    with pytest.raises(ValueError, match="reflection"):
        g.index(1, 0)
    with pytest.raises(ValueError, match="|G|"):
        g.act_on_group_axis(1, torch.zeros(1, 1, 3, 2, 2))
