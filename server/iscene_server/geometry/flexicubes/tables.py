"""FlexiCubes lookup tables and the cube conventions they are written for.

The table data (``dmc_table``, ``num_vd_table``, ``check_table``) is transcribed from NVIDIA FlexiCubes
``tables.py`` at commit 815e075 (the MaxtirError/FlexiCubes fork that TRELLIS pins), Copyright (c) NVIDIA
CORPORATION & AFFILIATES, licensed under the Apache License, Version 2.0
(http://www.apache.org/licenses/LICENSE-2.0). Only the data is reproduced here, in a compact encoding that
expands to exactly the original padded tables; ``tet_table`` is not needed.

Encoding: ``_DMC_GROUPS[case]`` lists the dual vertices of a case separated by spaces, each as the hexadecimal
digits of its cube edge indices; ``_NUM_VD`` is one digit per case; ``_CHECK`` maps each ambiguous case to
``(dx, dy, dz, inverted_case)`` (every other case has the row ``[0, 0, 0, 0, 0]``).
"""

from __future__ import annotations

CORNER_OFFSETS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1),
)
"""Corner ``k`` of a cube sits at ``cube + CORNER_OFFSETS[k]`` (index = x + 2y + 4z)."""

EDGE_CORNERS: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 5), (4, 5), (0, 4), (2, 3), (3, 7), (6, 7), (2, 6), (2, 0), (3, 1), (7, 5), (6, 4),
)
"""The 12 cube edges as ordered corner pairs: x and z edges point up their axis, y edges point down theirs."""

MAX_DUAL_VERTICES = 4
MAX_GROUP_EDGES = 7

_DMC_GROUPS: tuple[str, ...] = (
    "", "038", "019", "1389", "478", "0347", "019 478", "13479",
    "459", "038 459", "0145", "13458", "5789", "03579", "01578", "1357",
    "23b", "028b", "019 23b", "1289b", "478 23b", "0247b", "019 478 23b", "12479b",
    "459 23b", "028b 459", "0145 23b", "12458b", "5789 23b", "02579b", "01578 23b", "1257b",
    "12a", "038 12a", "029a", "2389a", "478 12a", "0347 12a", "029a 478", "23479a",
    "459 12a", "038 459 12a", "0245a", "23458a", "5789 12a", "03579 12a", "02578a", "2357a",
    "13ab", "018ab", "039ab", "89ab", "478 13ab", "0147ab", "039ab 478", "479ab",
    "459 13ab", "018ab 459", "0345ab", "458ab", "5789 13ab", "01579ab", "03578ab", "57ab",
    "67b", "038 67b", "019 67b", "1389 67b", "468b", "0346b", "019 468b", "13469b",
    "459 67b", "038 459 67b", "0145 67b", "13458 67b", "5689b", "03569b", "01568b", "1356b",
    "2367", "02678", "019 2367", "126789", "23468", "0246", "019 23468", "12469",
    "459 2367", "02678 459", "0145 2367", "1245678", "235689", "02569", "0123568", "1256",
    "12a 67b", "038 12a 67b", "029a 67b", "2389a 67b", "468b 12a", "0346b 12a", "029a 468b", "23469ab",
    "459 12a 67b", "038 459 12a 67b", "0245a 67b", "23458a 67b", "5689b 12a", "03569b 12a", "02568ab", "2356ab",
    "1367a", "01678a", "03679a", "6789a", "13468a", "0146a", "034689a", "469a",
    "459 1367a", "01678a 459", "034567a", "45678a", "135689a", "01569a", "038 56a", "56a",
    "56a", "038 56a", "019 56a", "1389 56a", "478 56a", "0347 56a", "019 478 56a", "13479 56a",
    "469a", "038 469a", "0146a", "13468a", "6789a", "03679a", "01678a", "1367a",
    "23b 56a", "028b 56a", "019 23b 56a", "1289b 56a", "478 23b 56a", "0247b 56a", "019 478 23b 56a", "12479b 56a",
    "469a 23b", "028b 469a", "0146a 23b", "12468ab", "6789a 23b", "02679ab", "01678a 23b", "1267ab",
    "1256", "038 1256", "02569", "235689", "478 1256", "0347 1256", "02569 478", "2345679",
    "12469", "038 12469", "0246", "23468", "126789", "0123679", "02678", "2367",
    "1356b", "01568b", "03569b", "5689b", "478 1356b", "014567b", "03569b 478", "45679b",
    "13469b", "014689b", "0346b", "468b", "136789b", "019 67b", "03678b", "67b",
    "57ab", "038 57ab", "019 57ab", "1389 57ab", "458ab", "0345ab", "019 458ab", "13459ab",
    "479ab", "038 479ab", "0147ab", "13478ab", "89ab", "039ab", "018ab", "13ab",
    "2357a", "02578a", "019 2357a", "125789a", "23458a", "0245a", "019 23458a", "12459a",
    "23479a", "024789a", "012347a", "478 12a", "2389a", "029a", "01238a", "12a",
    "1257b", "038 1257b", "02579b", "235789b", "12458b", "012345b", "024589b", "459 23b",
    "12479b", "038 12479b", "0247b", "23478b", "1289b", "01239b", "028b", "23b",
    "1357", "01578", "03579", "5789", "13458", "0145", "034589", "459",
    "13479", "014789", "0347", "478", "1389", "019", "038", "",
)
_NUM_VD: tuple[str, ...] = (
    "0111112112111111112121312221212112112221231122111111212122112111"
    "1222112123221111112111212221111123222221342222111111111122111121"
    "1222223212111111223232422221212112112221121111111111212111111211"
    "1222112112111111112111211112111112111112121111111111111111111110"
)
_CHECK: dict[int, tuple[int, int, int, int]] = {
    61: (1, 0, 0, 194), 62: (-1, 0, 0, 193), 91: (0, 1, 0, 164), 94: (0, -1, 0, 161),
    103: (0, 0, 1, 152), 110: (0, 0, 1, 145), 111: (0, 0, 1, 144), 118: (0, 0, -1, 137),
    122: (0, 1, 0, 133), 123: (0, 1, 0, 132), 124: (1, 0, 0, 131), 125: (1, 0, 0, 130),
    155: (0, 0, 1, 100), 157: (0, 0, 1, 98), 159: (0, 0, 1, 96), 167: (0, 1, 0, 88),
    173: (0, -1, 0, 82), 181: (0, 1, 0, 74), 183: (0, 1, 0, 72), 185: (0, 0, -1, 70),
    188: (-1, 0, 0, 67), 190: (-1, 0, 0, 65), 199: (1, 0, 0, 56), 203: (-1, 0, 0, 52),
    211: (1, 0, 0, 44), 215: (1, 0, 0, 40), 217: (0, 0, -1, 38), 218: (0, -1, 0, 37),
    222: (0, -1, 0, 33), 227: (-1, 0, 0, 28), 229: (0, -1, 0, 26), 230: (0, 0, -1, 25),
    235: (-1, 0, 0, 20), 237: (0, -1, 0, 18), 246: (0, 0, -1, 9), 249: (0, 0, -1, 6),
}


def _expand_dmc(groups: str) -> tuple[tuple[int, ...], ...]:
    rows = [tuple(int(digit, 16) for digit in group) for group in groups.split()]
    rows += [()] * (MAX_DUAL_VERTICES - len(rows))
    return tuple(row + (-1,) * (MAX_GROUP_EDGES - len(row)) for row in rows)


DMC_TABLE: tuple[tuple[tuple[int, ...], ...], ...] = tuple(_expand_dmc(groups) for groups in _DMC_GROUPS)
"""``[256][4][7]``: for each case, the cube edges of each dual vertex, padded with -1."""

NUM_VD_TABLE: tuple[int, ...] = tuple(int(digit) for digit in "".join(_NUM_VD))
"""``[256]``: the number of dual vertices of each case."""

CHECK_TABLE: tuple[tuple[int, ...], ...] = tuple(
    (1, *_CHECK[case]) if case in _CHECK else (0, 0, 0, 0, 0) for case in range(256)
)
"""``[256][5]``: ``[flag, dx, dy, dz, inverted_case]`` for resolving ambiguous faces between neighbouring cubes."""
