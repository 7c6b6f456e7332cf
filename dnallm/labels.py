"""The 37 KEGG disease labels of the BioReason variant->disease set: the one place they live."""

KEGG_LABELS: tuple[str, ...] = (  # alphabetical
    "acute myeloid leukemia", "adenine phosphoribosyltransferase deficiency", "alzheimer's disease",
    "amyotrophic lateral sclerosis", "basal cell carcinoma", "chronic myeloid leukemia",
    "clear cell renal cell carcinoma", "colorectal cancer", "creutzfeldt-jakob disease", "cushing syndrome",
    "gastric cancer", "gaucher disease", "glioblastoma multiforme", "hepatocellular carcinoma",
    "huntington's disease", "lesch-nyhan syndrome", "melanoma", "methylmalonic aciduria and homocystinuria",
    "multiple endocrine neoplasia type 1", "n-acetylglutamate synthase deficiency", "non-small cell lung cancer",
    "pancreatic ductal adenocarcinoma", "papillary renal cell carcinoma", "papillary thyroid carcinoma",
    "parkinson's disease", "pituitary adenoma", "primary aldosteronism", "prion disease", "prostate cancer",
    "renal cell carcinoma", "robinow syndrome", "sphingolipidoses", "spinocerebellar ataxia", "thyroid cancer",
    "thyroid dyshormonogenesis", "urothelial carcinoma", "von hippel-lindau syndrome",
)
LABEL_TO_ID: dict[str, int] = {label: i for i, label in enumerate(KEGG_LABELS)}
assert len(KEGG_LABELS) == 37 == len(LABEL_TO_ID)


def normalize_label(text: str) -> str:
    """Canonical form used for matching: lower case, single spaces, no trailing punctuation."""
    return " ".join(text.strip().lower().rstrip(".").split())
