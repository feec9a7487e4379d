//! The DICOM files of one series: every regular file of a folder (recursively) or
//! every entry of a `.zip`, parsed with `dicom-object`. Files without the `DICM`
//! marker (READMEs, thumbnails) are skipped and counted; so are DICOM objects with no
//! pixel data (DICOMDIR, reports, presentation states).

use std::io::Read;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions, file::ReadPreamble};

use crate::io::VolumeError;

/// One file or zip entry and its name for messages (`series.zip!IM0001` for an entry).
pub struct DicomFile {
    pub name: PathBuf,
    pub object: DefaultDicomObject,
}

/// What was found besides the image objects.
#[derive(Debug, Default)]
pub struct Skipped {
    pub not_dicom: usize,
    pub no_pixels: usize,
}

/// A single file larger than this is refused (a zip bomb, or not a slice).
const MAX_FILE_BYTES: u64 = 4 << 30;

/// Read every DICOM image object of `path`: a folder, a `.zip`, or one DICOM file.
pub fn read_objects(path: &Path) -> Result<(Vec<DicomFile>, Skipped), VolumeError> {
    let mut out = Vec::new();
    let mut skipped = Skipped::default();
    if path.is_dir() {
        let mut files = Vec::new();
        list_files(path, &mut files)?;
        files.sort();
        for f in files {
            let file = crate::io::nifti::open_regular(&f)?;
            let mut bytes = Vec::new();
            file.take(MAX_FILE_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| VolumeError::new(&f, format!("cannot read file: {e}")))?;
            add(&f, &bytes, &mut out, &mut skipped)?;
        }
    } else {
        // a missing path, a FIFO or a device is refused here, naming it
        let file = crate::io::nifti::open_regular(path)?;
        if has_dicm_marker(path) {
            // one file: an enhanced multi-frame object (or a single slice)
            let mut bytes = Vec::new();
            file.take(MAX_FILE_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| VolumeError::new(path, format!("cannot read file: {e}")))?;
            add(path, &bytes, &mut out, &mut skipped)?;
            return Ok((out, skipped));
        }
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
            VolumeError::new(
                path,
                format!("neither a folder of DICOM files nor a readable .zip of one ({e})"),
            )
        })?;
        for i in 0..zip.len() {
            let mut entry = zip
                .by_index(i)
                .map_err(|e| VolumeError::new(path, format!("damaged zip entry {i}: {e}")))?;
            if !entry.is_file() {
                continue;
            }
            let name = PathBuf::from(format!(
                "{}!{}",
                path.display(),
                entry.name().unwrap_or_default()
            ));
            let mut bytes = Vec::new();
            (&mut entry)
                .take(MAX_FILE_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| VolumeError::new(&name, format!("cannot unpack: {e}")))?;
            add(&name, &bytes, &mut out, &mut skipped)?;
        }
    }
    Ok((out, skipped))
}

/// True when `path` is a regular file with the DICOM marker (`DICM` at byte 128).
pub fn has_dicm_marker(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    let mut head = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head[128..] == b"DICM"
}

fn list_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), VolumeError> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| VolumeError::new(dir, format!("cannot list the folder: {e}")))?;
    for entry in rd {
        let entry = entry.map_err(|e| VolumeError::new(dir, format!("cannot list: {e}")))?;
        let p = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        let ft = entry
            .file_type()
            .map_err(|e| VolumeError::new(&p, format!("cannot read: {e}")))?;
        if hidden {
            continue;
        } else if ft.is_dir() {
            list_files(&p, out)?;
        } else if std::fs::metadata(&p).map(|m| m.is_file()).unwrap_or(false) {
            out.push(p);
        }
    }
    Ok(())
}

/// Parse one file's bytes; keep it if it is a DICOM object with pixel data.
fn add(
    name: &Path,
    bytes: &[u8],
    out: &mut Vec<DicomFile>,
    skipped: &mut Skipped,
) -> Result<(), VolumeError> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(VolumeError::new(
            name,
            format!(
                "larger than {} GiB: not a DICOM slice",
                MAX_FILE_BYTES >> 30
            ),
        ));
    }
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        skipped.not_dicom += 1;
        return Ok(());
    }
    // lengths and nesting checked before the parser trusts them (scan.rs)
    super::scan::check(bytes)
        .map_err(|e| VolumeError::new(name, format!("damaged DICOM file: {e}")))?;
    let object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(&bytes[128..])
        .map_err(|e| VolumeError::new(name, format!("damaged DICOM file: {e}")))?;
    if object
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .is_none()
    {
        skipped.no_pixels += 1;
        return Ok(());
    }
    out.push(DicomFile {
        name: name.to_path_buf(),
        object,
    });
    Ok(())
}
