"""Sources -> one dataset contract; patient-level splits."""
from cxr_tf.datasets.contract import CXRDataset, concat
from cxr_tf.datasets.covid import (
    COVID_3CLASS,
    COVID_BINARY,
    format_source_mix,
    load_covid_dataset,
    shortcut_warnings,
    source_mix,
)
from cxr_tf.datasets.sources import (
    FORMATS,
    KERMANY_3CLASS,
    KERMANY_PNEUMONIA,
    describe_format,
    detect_format,
    is_kermany_layout,
    kermany_patient_id,
    load_csv_manifest,
    load_dataset,
    load_folder,
    load_kermany,
    load_medmnist,
)
from cxr_tf.datasets.splits import (
    check_leakage,
    kfold_patient_splits,
    kfold_with_validation,
    load_splits,
    patient_split,
    patient_subset,
    save_splits,
    split_summary,
)
