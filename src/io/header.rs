//! Shape and spacing read from a NIfTI header alone, without decoding the voxels.

use std::path::Path;

use anyhow::Context;

/// Shape and spacing from a NIfTI header alone (decompressing only its first bytes).
pub fn header_grid(path: &Path) -> anyhow::Result<([usize; 3], [f64; 3])> {
    use std::io::Read;
    let f = super::nifti::open_regular(path)?;
    let mut head = Vec::with_capacity(352);
    let mut magic = [0u8; 2];
    let mut r = std::io::BufReader::new(f);
    r.read_exact(&mut magic)
        .with_context(|| format!("{}: empty file", path.display()))?;
    let rest = std::io::Read::chain(&magic[..], r);
    if magic == [0x1f, 0x8b] {
        flate2::read::MultiGzDecoder::new(rest)
            .take(348)
            .read_to_end(&mut head)?;
    } else {
        rest.take(348).read_to_end(&mut head)?;
    }
    anyhow::ensure!(
        head.len() == 348,
        "{}: not a NIfTI-1 file (header too short)",
        path.display()
    );
    let h = nifti::NiftiHeader::from_reader(&head[..])
        .map_err(|e| anyhow::anyhow!("{}: invalid NIfTI header: {e}", path.display()))?;
    Ok((
        [h.dim[1] as usize, h.dim[2] as usize, h.dim[3] as usize],
        [h.pixdim[1] as f64, h.pixdim[2] as f64, h.pixdim[3] as f64],
    ))
}
