import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless,
                         JPEGLSLossless, generate_uid)

from src.lib.dicom import read_dicom

ROWS, COLUMNS = 48, 64  # not square, so a transposed image shows
LUNG = {"center": -600.0, "width": 1500.0}  # HU -1350 .. 150


def ct_slice(stored, slope=1, intercept=-1024) -> Dataset:
    """A 16-bit signed CT slice holding `stored` (a number fills the whole slice)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    ds.PixelData = np.broadcast_to(np.asarray(stored, "<i2"), (ROWS, COLUMNS)).tobytes()
    return ds


def save(ds: Dataset, tmp_path, name="slice.dcm"):
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def grey_levels(path) -> set[int]:
    return set(np.unique(np.asarray(read_dicom(path, **LUNG))).tolist())


def assert_rejected(path, match: str) -> None:
    with pytest.raises(ValueError, match=match) as caught:
        read_dicom(path, **LUNG)
    assert "\n" not in str(caught.value)  # it becomes one "skipped: reason" line


def test_slice_becomes_8bit_grayscale_image_of_its_size(tmp_path):
    image = read_dicom(save(ct_slice(0), tmp_path), **LUNG)

    assert image.mode == "L"
    assert image.size == (COLUMNS, ROWS)


# (HU - (-1350)) * 255 / 1500, rounded half up: -600 is 127.5 -> 128, -1300 is 8.5 -> 9
@pytest.mark.parametrize("hu, expected", [(-2000, 0), (-1350, 0), (-1300, 9), (-600, 128),
                                          (149, 255), (150, 255), (1000, 255)])
def test_lung_window_maps_hounsfield_units_to_grey_levels(tmp_path, hu, expected):
    path = save(ct_slice(hu + 1024), tmp_path)  # intercept -1024

    assert grey_levels(path) == {expected}


def test_window_keeps_detail_inside_it(tmp_path):
    stored = np.array([-1000, -900, -800, -700, -600]) + 1024
    ds = ct_slice(np.resize(stored, (ROWS, COLUMNS)))

    assert grey_levels(save(ds, tmp_path)) == {60, 77, 94, 111, 128}


def test_rescale_slope_is_honoured(tmp_path):
    path = save(ct_slice(212, slope=2), tmp_path)  # 2 * 212 - 1024 = HU -600

    assert grey_levels(path) == {128}


def test_missing_rescale_means_stored_values_are_hounsfield_units(tmp_path):
    path = save(ct_slice(-600, slope=None, intercept=None), tmp_path)

    assert grey_levels(path) == {128}


@pytest.mark.parametrize("hu, expected", [(-1350, 255), (-600, 127), (150, 0)])
def test_monochrome1_is_inverted_after_the_window(tmp_path, hu, expected):
    ds = ct_slice(hu + 1024)
    ds.PhotometricInterpretation = "MONOCHROME1"

    assert grey_levels(save(ds, tmp_path)) == {expected}


def test_file_without_pixel_data_is_rejected(tmp_path):
    ds = ct_slice(0)
    del ds.PixelData

    assert_rejected(save(ds, tmp_path), "pixel data")


def test_corrupt_compressed_pixel_data_is_rejected_naming_the_transfer_syntax(tmp_path):
    ds = ct_slice(0)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"not a JPEG 2000 codestream"])
    ds["PixelData"].VR = "OB"

    assert_rejected(save(ds, tmp_path), r"JPEG 2000 Image Compression \(Lossless Only\)")


def test_compressed_syntax_without_decoder_asks_for_a_plugin(tmp_path):
    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder plugin is installed here")
    ds = ct_slice(0)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"not a JPEG-LS codestream"])
    ds["PixelData"].VR = "OB"

    assert_rejected(save(ds, tmp_path), "JPEG-LS Lossless Image Compression .*decoder plugin")


def test_multi_frame_file_is_rejected(tmp_path):
    ds = ct_slice(0)
    ds.NumberOfFrames = 3
    ds.PixelData = ds.PixelData * 3

    assert_rejected(save(ds, tmp_path), r"multi-frame DICOM \(3 frames\)")


def test_colour_file_is_rejected_naming_its_photometric_interpretation(tmp_path):
    ds = ct_slice(0)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(ROWS * COLUMNS * 3)

    assert_rejected(save(ds, tmp_path), r"not a grayscale DICOM \(RGB\)")


def test_png_renamed_to_dcm_is_rejected(tmp_path):
    path = tmp_path / "slice.dcm"
    Image.new("L", (COLUMNS, ROWS)).save(path, format="PNG")

    assert_rejected(path, "not a DICOM file")
