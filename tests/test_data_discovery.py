"""Finding subjects and contrasts by name in every supported layout (empty files suffice)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mri2mri.data.discovery import canonical_contrast, contrast_of, discover_pairs, subject_key
from mri2mri.errors import ConfigError, DataError


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def pairs_of(root, source="T1", target="T2"):
    found = discover_pairs(root, source, target)
    return {
        p.subject: (p.source.name, p.target.name, p.layout) for p in found.pairs
    }, found.problems


@pytest.mark.parametrize(
    ("name", "contrast"),
    [
        ("t1n", "T1"),
        ("T1", "T1"),
        ("T1w", "T1"),
        ("t2w", "T2"),
        ("t2", "T2"),
        ("T2w", "T2"),
        ("t2f", "FLAIR"),
        ("fla", "FLAIR"),
        ("FLAIR", "FLAIR"),
        ("t1c", "T1c"),
        ("T1CE", "T1c"),
        ("t1gd", "T1c"),
        ("pd", "PD"),
        ("PDw", "PD"),
    ],
)
def test_canonical_contrast_aliases(name, contrast):
    assert canonical_contrast(name) == contrast


def test_unknown_contrast_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown contrast 'dwi'.*T1 .*FLAIR"):
        canonical_contrast("dwi")


def test_tokens_keep_t1_apart_from_t1c_and_t2_from_t2f():
    assert contrast_of("BraTS-GLI-00001-000-t1c.nii.gz") == "T1c"
    assert contrast_of("BraTS-GLI-00001-000-t1n.nii.gz") == "T1"
    assert contrast_of("BraTS-GLI-00001-000-t2f.nii.gz") == "FLAIR"
    assert contrast_of("TCGA-DU-7294_t1_bet_normalized.nii.gz") == "T1"
    assert contrast_of("TCGA-DU-7294_t1c_bet_normalized.nii.gz") == "T1c"
    assert contrast_of("TCGA-DU-7294_fla_bet_normalized.nii.gz") == "FLAIR"
    assert contrast_of("BraTS-GLI-00001-000-seg.nii.gz") is None
    assert contrast_of("t1_brainmask.nii.gz") is None
    assert contrast_of("t1_mask.nii.gz") is None
    assert contrast_of("IXI002-Guys-0828-DTI-00.nii.gz") is None
    assert subject_key("IXI002-Guys-0828-T1.nii.gz") == "IXI002-Guys-0828"
    assert subject_key("sub-01_T1w_run-1.nii.gz") == "sub-01_run-1"


def test_brats_layout_any_pair(tmp_path):
    for case in ("BraTS-GLI-00001-000", "BraTS-GLI-00002-000"):
        touch(tmp_path, *(f"{case}/{case}-{c}.nii.gz" for c in ("t1n", "t1c", "t2w", "t2f", "seg")))
    pairs, problems = pairs_of(tmp_path)
    assert not problems
    assert pairs["BraTS-GLI-00001-000"] == (
        "BraTS-GLI-00001-000-t1n.nii.gz",
        "BraTS-GLI-00001-000-t2w.nii.gz",
        "folders",
    )
    pairs, _ = pairs_of(tmp_path, "t1", "flair")
    assert pairs["BraTS-GLI-00002-000"][:2] == (
        "BraTS-GLI-00002-000-t1n.nii.gz",
        "BraTS-GLI-00002-000-t2f.nii.gz",
    )
    pairs, _ = pairs_of(tmp_path, "T2", "T1c")
    assert pairs["BraTS-GLI-00002-000"][:2] == (
        "BraTS-GLI-00002-000-t2w.nii.gz",
        "BraTS-GLI-00002-000-t1c.nii.gz",
    )


def test_ixi_flat_folder(tmp_path):
    touch(
        tmp_path,
        "IXI002-Guys-0828-T1.nii.gz",
        "IXI002-Guys-0828-T2.nii.gz",
        "IXI002-Guys-0828-PD.nii.gz",
        "IXI012-HH-1211-T1.nii.gz",
        "IXI012-HH-1211-T2.nii.gz",
        "IXI013-HH-1212-T1.nii.gz",
        "IXI002-Guys-0828-MRA.nii.gz",
    )
    pairs, problems = pairs_of(tmp_path)
    assert pairs == {
        "IXI002-Guys-0828": ("IXI002-Guys-0828-T1.nii.gz", "IXI002-Guys-0828-T2.nii.gz", "flat"),
        "IXI012-HH-1211": ("IXI012-HH-1211-T1.nii.gz", "IXI012-HH-1211-T2.nii.gz", "flat"),
    }
    assert (
        len(problems) == 1 and "IXI013-HH-1212: no T2" in problems[0] and "found T1" in problems[0]
    )
    pairs, _ = pairs_of(tmp_path, "PD", "T2")
    assert list(pairs) == ["IXI002-Guys-0828"]


def test_subject_folders_bids_and_nested(tmp_path):
    touch(
        tmp_path,
        "sub-01/T1.nii.gz",
        "sub-01/T2.nii.gz",
        "sub-02/anat/sub-02_T1w.nii.gz",
        "sub-02/anat/sub-02_T2w.nii.gz",
        "sub-03/t1.nii",
        "sub-03/t2.nii",
    )
    pairs, problems = pairs_of(tmp_path)
    assert not problems
    assert pairs["sub-01"][:2] == ("T1.nii.gz", "T2.nii.gz")
    assert pairs["sub-02"][:2] == ("sub-02_T1w.nii.gz", "sub-02_T2w.nii.gz")
    assert pairs["sub-03"][:2] == ("t1.nii", "t2.nii")


def test_real_data_conventions(tmp_path):
    """Mirror of ../shared/data/real-mri: three naming conventions in one root."""
    touch(
        tmp_path,
        *(
            f"BraTS-GLI-00001-000/BraTS-GLI-00001-000-{c}.nii.gz"
            for c in ("t1n", "t1c", "t2w", "t2f")
        ),
    )
    touch(
        tmp_path,
        *(
            f"TCGA-DU-7294/TCGA-DU-7294_{c}_bet_normalized.nii.gz"
            for c in ("t1", "t1c", "t2", "fla")
        ),
    )
    touch(
        tmp_path,
        *(f"BrainLesion-preprocessed_case/{c}.nii.gz" for c in ("t1n", "t1c", "t2w", "t2f")),
    )
    touch(tmp_path, "README.md")
    pairs, problems = pairs_of(tmp_path)
    assert not problems
    assert pairs == {
        "BraTS-GLI-00001-000": (
            "BraTS-GLI-00001-000-t1n.nii.gz",
            "BraTS-GLI-00001-000-t2w.nii.gz",
            "folders",
        ),
        "TCGA-DU-7294": (
            "TCGA-DU-7294_t1_bet_normalized.nii.gz",
            "TCGA-DU-7294_t2_bet_normalized.nii.gz",
            "folders",
        ),
        "BrainLesion-preprocessed_case": ("t1n.nii.gz", "t2w.nii.gz", "folders"),
    }
    flair, _ = pairs_of(tmp_path, "T1c", "FLAIR")
    assert flair["TCGA-DU-7294"][:2] == (
        "TCGA-DU-7294_t1c_bet_normalized.nii.gz",
        "TCGA-DU-7294_fla_bet_normalized.nii.gz",
    )
    assert flair["BrainLesion-preprocessed_case"][:2] == ("t1c.nii.gz", "t2f.nii.gz")


def test_root_that_is_one_subject(tmp_path):
    case = tmp_path / "case7"
    touch(case, "t1n.nii.gz", "t2w.nii.gz")
    pairs, _ = pairs_of(case)
    assert pairs == {"case7": ("t1n.nii.gz", "t2w.nii.gz", "flat")}


def test_dicom_series_folders(tmp_path):
    touch(
        tmp_path,
        "sub-01/T1/IM0001.dcm",
        "sub-01/T1/IM0002.dcm",
        "sub-01/T2/IM0001.dcm",
        "sub-02/t1/a.dcm",
        "sub-02/FLAIR/a.dcm",
    )
    pairs, problems = pairs_of(tmp_path)
    assert pairs == {"sub-01": ("T1", "T2", "dicom")}
    assert len(problems) == 1 and problems[0].startswith("subject sub-02: no T2")
    # A root that is one subject's folder of series.
    pairs, _ = pairs_of(tmp_path / "sub-01")
    assert pairs == {"sub-01": ("T1", "T2", "dicom")}


def test_ambiguous_contrast_is_a_problem_not_a_guess(tmp_path):
    touch(tmp_path, "sub-01/T1.nii.gz", "sub-01/T1w.nii.gz", "sub-01/T2.nii.gz")
    pairs, problems = pairs_of(tmp_path)
    assert not pairs
    assert "subject sub-01: several T1 images" in problems[0] and "T1w.nii.gz" in problems[0]


def test_csv_manifest(tmp_path):
    data = tmp_path / "data"
    touch(data, "a/t1.nii.gz", "a/t2.nii.gz")
    outside = tmp_path / "elsewhere"
    touch(outside, "b_T1.nii.gz", "b_T2.nii.gz")
    manifest = data / "pairs.csv"
    manifest.write_text(
        "subject,source,target\n"
        "a,a/t1.nii.gz,a/t2.nii.gz\n"
        f"b,../elsewhere/b_T1.nii.gz,{outside / 'b_T2.nii.gz'}\n"
        "c,c/t1.nii.gz,c/t2.nii.gz\n",
        encoding="utf-8",
    )
    found = discover_pairs(manifest, "T1", "T2")
    assert [p.subject for p in found.pairs] == ["a", "b"]
    assert found.pairs[0].source == data.resolve() / "a/t1.nii.gz"
    assert found.pairs[1].source.resolve() == (outside / "b_T1.nii.gz").resolve()
    assert found.pairs[0].layout == "manifest"
    assert (
        len(found.problems) == 1
        and "subject c" in found.problems[0]
        and "not found" in found.problems[0]
    )


def test_csv_manifest_with_contrast_columns_and_bad_header(tmp_path):
    touch(tmp_path, "x1.nii.gz", "x2.nii.gz")
    manifest = tmp_path / "m.csv"
    manifest.write_text("Subject,T1,FLAIR\nx,x1.nii.gz,x2.nii.gz\n", encoding="utf-8")
    found = discover_pairs(manifest, "T1", "FLAIR")
    assert [(p.source.name, p.target.name) for p in found.pairs] == [("x1.nii.gz", "x2.nii.gz")]
    bad = tmp_path / "bad.csv"
    bad.write_text("name,file\nx,x1.nii.gz\n", encoding="utf-8")
    with pytest.raises(DataError, match="bad.csv: manifest needs columns subject, source, target"):
        discover_pairs(bad, "T1", "T2")


def test_same_contrast_and_missing_root(tmp_path):
    with pytest.raises(ConfigError, match="both T1"):
        discover_pairs(tmp_path, "t1n", "T1w")
    with pytest.raises(DataError, match="no such folder"):
        discover_pairs(tmp_path / "nowhere", "T1", "T2")
