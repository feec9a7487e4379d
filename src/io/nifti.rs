//! NIfTI-1 reading and writing (`.nii`, `.nii.gz`) through the `nifti` crate.
//!
//! Every malformed input becomes a [`VolumeError`] naming the file and the
//! problem; the header is validated before the crate is asked for anything that
//! could panic. Writes go to a temporary file in the destination folder that is
//! renamed into place, so an interrupted write never leaves a half file.

use std::io::Read;
use std::path::{Path, PathBuf};

use nalgebra::Matrix4;
use ndarray::{Array3, Ix3};
use nifti::volume::ndarray::IntoNdArray;
use nifti::writer::WriterOptions;
use nifti::{DataElement, InMemNiftiVolume, NiftiHeader, NiftiType, XForm};
use num_traits::FromPrimitive;

use super::nifti2::{NIFTI2_HEADER, nifti2_endianness, nifti2_header};
use super::volume::Volume;

/// A problem with one file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct VolumeError {
    pub path: PathBuf,
    pub problem: String,
    pub kind: Problem,
}

/// What kind of problem a [`VolumeError`] is (the Python package raises
/// `FileNotFoundError`, `OSError` or `ValueError` by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Nothing is at the path.
    NotFound,
    /// The operating system refused to read it (permissions, an I/O error).
    Unreadable,
    /// It was read, and its content is not a usable volume.
    Invalid,
}

impl VolumeError {
    /// A file whose content is not usable.
    pub fn new(path: &Path, problem: impl Into<String>) -> Self {
        VolumeError {
            path: path.to_path_buf(),
            problem: problem.into(),
            kind: Problem::Invalid,
        }
    }

    pub fn with_kind(mut self, kind: Problem) -> Self {
        self.kind = kind;
        self
    }
}

/// The on-disk voxel types this project reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    Int8,
    Uint8,
    Int16,
    Uint16,
    Int32,
    Float32,
    Float64,
}

impl DType {
    pub const ALL: [DType; 7] = [
        DType::Int8,
        DType::Uint8,
        DType::Int16,
        DType::Uint16,
        DType::Int32,
        DType::Float32,
        DType::Float64,
    ];

    fn from_nifti(t: NiftiType) -> Option<DType> {
        Some(match t {
            NiftiType::Int8 => DType::Int8,
            NiftiType::Uint8 => DType::Uint8,
            NiftiType::Int16 => DType::Int16,
            NiftiType::Uint16 => DType::Uint16,
            NiftiType::Int32 => DType::Int32,
            NiftiType::Float32 => DType::Float32,
            NiftiType::Float64 => DType::Float64,
            _ => return None,
        })
    }

    pub fn size_of(self) -> usize {
        match self {
            DType::Int8 | DType::Uint8 => 1,
            DType::Int16 | DType::Uint16 => 2,
            DType::Int32 | DType::Float32 => 4,
            DType::Float64 => 8,
        }
    }

    pub fn is_integer(self) -> bool {
        !matches!(self, DType::Float32 | DType::Float64)
    }
}

/// Element types a volume can be read into.
pub trait Voxel:
    DataElement + bytemuck::Pod + num_traits::NumCast + PartialOrd + Send + Sync + Bounded
{
}
impl<T: DataElement + bytemuck::Pod + num_traits::NumCast + PartialOrd + Send + Sync + Bounded>
    Voxel for T
{
}

/// What the header said besides the volume itself.
#[derive(Clone, Debug)]
pub struct NiftiInfo {
    /// 1 or 2: the NIfTI version of the file.
    pub version: u8,
    pub dtype: DType,
    /// "sform", "qform" or "pixdim": where the affine came from.
    pub affine_source: &'static str,
    /// The scaling applied ([`effective_scaling`]: slope 0 = none).
    pub scl_slope: f32,
    pub scl_inter: f32,
    /// Set when the header's scaling was unusable and replaced (what and why).
    pub scaling_note: Option<String>,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The most voxel data one file may declare (bytes). A header asking for more is
/// rejected before anything is allocated for it.
pub const MAX_VOXEL_BYTES: u64 = 16 << 30;

/// Trailing compressed data read after the voxels only to check the gzip stream's
/// checksum (a bound, so a gzip bomb after valid voxels cannot exhaust memory or time).
const MAX_TRAILING_BYTES: u64 = 64 << 20;

/// Open `path` for reading if it is a regular file (after following links). A FIFO
/// would block forever and a character device (e.g. a link to `/dev/zero`) would
/// be read without end, so both are refused by their type, before opening.
pub fn open_regular(path: &Path) -> Result<std::fs::File, VolumeError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            VolumeError::new(path, "file not found").with_kind(Problem::NotFound)
        }
        _ => {
            VolumeError::new(path, format!("cannot read file: {e}")).with_kind(Problem::Unreadable)
        }
    })?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "a folder"
        } else if is_fifo(&ft) {
            "a FIFO (named pipe)"
        } else if is_device(&ft) {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(VolumeError::new(
            path,
            format!("{what}, not a regular file: only regular files are read"),
        ));
    }
    std::fs::File::open(path).map_err(|e| {
        VolumeError::new(path, format!("cannot read file: {e}")).with_kind(Problem::Unreadable)
    })
}

#[cfg(unix)]
fn is_fifo(ft: &std::fs::FileType) -> bool {
    use std::os::unix::fs::FileTypeExt;
    ft.is_fifo()
}
#[cfg(unix)]
fn is_device(ft: &std::fs::FileType) -> bool {
    use std::os::unix::fs::FileTypeExt;
    ft.is_char_device() || ft.is_block_device()
}
#[cfg(not(unix))]
fn is_fifo(_: &std::fs::FileType) -> bool {
    false
}
#[cfg(not(unix))]
fn is_device(_: &std::fs::FileType) -> bool {
    false
}

/// Read a 3D NIfTI-1 file (`.nii` or `.nii.gz`) into a volume of `T`
/// (scl_slope/scl_inter applied).
pub fn read_nifti<T: Voxel>(path: &Path) -> Result<(Volume<T>, NiftiInfo), VolumeError> {
    let file = open_regular(path)?;
    read_nifti_from(std::io::BufReader::new(file), path)
}

/// Read a NIfTI-1 file held in memory; `path` only names it in errors.
pub fn read_nifti_bytes<T: Voxel>(
    bytes: &[u8],
    path: &Path,
) -> Result<(Volume<T>, NiftiInfo), VolumeError> {
    read_nifti_from(bytes, path)
}

/// The scaling actually applied, as nibabel and the NIfTI standard read it: a slope
/// of 0 or a non-finite slope means no scaling (returned as slope 0, the `nifti`
/// crate's "none"); a non-finite intercept is taken as 0.
pub fn effective_scaling(slope: f32, inter: f32) -> (f32, f32) {
    if slope == 0.0 || !slope.is_finite() {
        (0.0, 0.0)
    } else {
        (slope, if inter.is_finite() { inter } else { 0.0 })
    }
}

/// What the header promises: the 3D shape, the voxel type and where the voxels lie.
struct Declared {
    /// 1 or 2.
    version: u8,
    header: NiftiHeader,
    shape: [usize; 3],
    dtype: DType,
    spacing: [f64; 3],
    offset: usize,
    need: usize,
}

/// Validate the header `raw` (348 bytes, or 540 for NIfTI-2) without trusting any of its numbers.
fn declared(raw: &[u8], err: &impl Fn(String) -> VolumeError) -> Result<Declared, VolumeError> {
    let (header, version, header_len) = parse_header(raw, err)?;
    let shape = volume_shape(&header).map_err(err)?;
    let nifti_type = NiftiType::from_i16(header.datatype)
        .ok_or_else(|| err(format!("unknown NIfTI datatype code {}", header.datatype)))?;
    let dtype = DType::from_nifti(nifti_type).ok_or_else(|| {
        err(format!(
            "unsupported voxel type {nifti_type:?}; supported: int8, uint8, int16, uint16, int32, float32, float64"
        ))
    })?;
    for a in 0..3 {
        let s = header.pixdim[a + 1];
        if !(s.is_finite() && s > 0.0) {
            return Err(err(format!(
                "voxel spacing must be positive, pixdim[{}] = {s}",
                a + 1
            )));
        }
    }
    let spacing = [0, 1, 2].map(|a| header.pixdim[a + 1] as f64);
    let (offset, need) = voxel_extent(&header, header_len, shape, dtype).map_err(err)?;
    Ok(Declared {
        version,
        header,
        shape,
        dtype,
        spacing,
        offset,
        need,
    })
}

/// The header (NIfTI-1 or -2), its version and its length in bytes.
fn parse_header(
    raw: &[u8],
    err: &impl Fn(String) -> VolumeError,
) -> Result<(NiftiHeader, u8, usize), VolumeError> {
    if raw.len() < 348 {
        return Err(err(format!(
            "not a NIfTI file: {} bytes, shorter than the 348-byte NIfTI-1 header",
            raw.len()
        )));
    }
    if let Some(big) = nifti2_endianness(raw) {
        let h = nifti2_header(raw, big).map_err(|p| err(format!("NIfTI-2: {p}")))?;
        return Ok((h, 2, NIFTI2_HEADER as usize));
    }
    let sizeof_le = i32::from_le_bytes(raw[0..4].try_into().expect("4 bytes"));
    let sizeof_be = i32::from_be_bytes(raw[0..4].try_into().expect("4 bytes"));
    if sizeof_le != 348 && sizeof_be != 348 {
        return Err(err(
            "not a NIfTI file (sizeof_hdr is neither 348 nor 540)".into()
        ));
    }
    let h = NiftiHeader::from_reader(raw).map_err(|e| err(format!("invalid NIfTI header: {e}")))?;
    Ok((h, 1, 348))
}

/// The 3D shape the header's `dim` declares (a fourth or higher dimension only of 1).
fn volume_shape(header: &NiftiHeader) -> Result<[usize; 3], String> {
    let ndim = header.dim[0];
    if !(1..=7).contains(&ndim) {
        return Err(format!("invalid header: dim[0] = {ndim}"));
    }
    let dims: Vec<i64> = header.dim[1..=ndim as usize]
        .iter()
        .map(|&d| d as i16 as i64)
        .collect();
    if dims.iter().any(|&d| d <= 0) {
        return Err(format!(
            "invalid header: non-positive dimension in {dims:?}"
        ));
    }
    if ndim < 3 {
        return Err(format!(
            "a 3D volume is needed, the file is {ndim}D ({dims:?})"
        ));
    }
    if dims[3..].iter().any(|&d| d > 1) {
        return Err(format!(
            "a 3D volume is needed, the file is {ndim}D with shape {dims:?}; extract one volume first"
        ));
    }
    Ok([dims[0] as usize, dims[1] as usize, dims[2] as usize])
}

/// Where the voxels start and how many bytes they take, both bounded.
fn voxel_extent(
    header: &NiftiHeader,
    header_len: usize,
    shape: [usize; 3],
    dtype: DType,
) -> Result<(usize, usize), String> {
    let offset = header.vox_offset;
    if !(offset.is_finite()
        && offset as f64 >= header_len as f64
        && offset as f64 <= MAX_VOXEL_BYTES as f64)
    {
        return Err(format!(
            "invalid vox_offset {offset} (the voxel data must start after the {header_len}-byte header)"
        ));
    }
    // shape ≤ 32767³ and 8-byte voxels: fits u64; checked all the same
    let need = shape
        .iter()
        .try_fold(dtype.size_of() as u64, |acc, &n| acc.checked_mul(n as u64))
        .filter(|&n| n <= MAX_VOXEL_BYTES)
        .ok_or_else(|| {
            format!(
                "the header's dimensions {}x{}x{} of {dtype:?} declare more than {} GiB of voxel data",
                shape[0],
                shape[1],
                shape[2],
                MAX_VOXEL_BYTES >> 30
            )
        })?;
    Ok((offset as usize, need as usize))
}

/// Read from `source` (plain or gzip): the header first, then exactly the bytes the
/// validated header declares, so no header can make this allocate more than the
/// file holds.
fn read_nifti_from<T: Voxel, R: Read>(
    source: R,
    path: &Path,
) -> Result<(Volume<T>, NiftiInfo), VolumeError> {
    let err = |p: String| VolumeError::new(path, p);
    let mut stream = Stream::open(source, &err)?;
    let mut raw = Vec::with_capacity(544);
    stream.read_up_to(&mut raw, 348, &err)?;
    if raw.len() == 348 && nifti2_endianness(&raw).is_some() {
        stream.read_up_to(&mut raw, NIFTI2_HEADER, &err)?;
    }
    let d = declared(&raw, &err)?;
    // offset ≥ the header's length, so this never goes below what is already read
    stream.read_up_to(&mut raw, (d.offset + d.need) as u64, &err)?;
    if raw.len() < d.offset + d.need {
        return Err(err(format!(
            "the header's dimensions {}x{}x{} of {:?} need {} bytes of voxel data, the file holds {} (truncated or wrong header)",
            d.shape[0],
            d.shape[1],
            d.shape[2],
            d.dtype,
            d.need,
            raw.len().saturating_sub(d.offset)
        )));
    }
    stream.finish(&err)?;
    to_volume(raw, d, &err)
}

/// A NIfTI file's byte stream, gunzipped when it starts with the gzip magic.
struct Stream<'a> {
    src: Box<dyn Read + 'a>,
    gz: bool,
}

impl<'a> Stream<'a> {
    fn open<R: Read + 'a>(
        mut source: R,
        err: &impl Fn(String) -> VolumeError,
    ) -> Result<Stream<'a>, VolumeError> {
        let mut magic = Vec::with_capacity(2);
        (&mut source)
            .take(2)
            .read_to_end(&mut magic)
            .map_err(|e| err(format!("cannot read file: {e}")))?;
        let gz = magic[..] == GZIP_MAGIC;
        let chained = std::io::Read::chain(std::io::Cursor::new(magic), source);
        let src: Box<dyn Read + 'a> = if gz {
            Box::new(flate2::read::MultiGzDecoder::new(chained))
        } else {
            Box::new(chained)
        };
        Ok(Stream { src, gz })
    }

    fn error(&self, e: std::io::Error, err: &impl Fn(String) -> VolumeError) -> VolumeError {
        if self.gz {
            err(format!("corrupt or truncated gzip stream ({e})"))
        } else {
            err(format!("cannot read file: {e}"))
        }
    }

    /// Read until `raw` holds `total` bytes or the stream ends.
    fn read_up_to(
        &mut self,
        raw: &mut Vec<u8>,
        total: u64,
        err: &impl Fn(String) -> VolumeError,
    ) -> Result<(), VolumeError> {
        let more = total.saturating_sub(raw.len() as u64);
        match (&mut self.src).take(more).read_to_end(raw) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.error(e, err)),
        }
    }

    /// A gzip stream is read to its end (boundedly), only to check its checksum.
    fn finish(&mut self, err: &impl Fn(String) -> VolumeError) -> Result<(), VolumeError> {
        if !self.gz {
            return Ok(());
        }
        let copied = std::io::copy(
            &mut (&mut self.src).take(MAX_TRAILING_BYTES),
            &mut std::io::sink(),
        );
        copied.map(|_| ()).map_err(|e| self.error(e, err))
    }
}

/// The volume from the file's bytes (`raw`: header, then at least the voxels).
fn to_volume<T: Voxel>(
    mut raw: Vec<u8>,
    d: Declared,
    err: &impl Fn(String) -> VolumeError,
) -> Result<(Volume<T>, NiftiInfo), VolumeError> {
    let Declared {
        version,
        header,
        shape,
        dtype,
        spacing,
        offset,
        need,
    } = d;
    let (affine, affine_source) = header_affine(&header, spacing).map_err(err)?;

    let (scl_slope, scl_inter) = effective_scaling(header.scl_slope, header.scl_inter);
    let mut h3 = header.clone();
    h3.scl_slope = scl_slope;
    h3.scl_inter = scl_inter;
    h3.dim = [
        3,
        shape[0] as u16,
        shape[1] as u16,
        shape[2] as u16,
        1,
        1,
        1,
        1,
    ];
    // the voxel bytes, moved to the front in place (no second buffer of the volume's size)
    raw.truncate(offset + need);
    raw.drain(..offset);
    let vol = InMemNiftiVolume::from_raw_data(&h3, raw)
        .map_err(|e| err(format!("cannot read voxel data: {e}")))?;
    let arr = vol
        .into_ndarray::<T>()
        .map_err(|e| err(format!("cannot convert voxel data: {e}")))?;
    let arr: Array3<T> = arr
        .into_dimensionality::<Ix3>()
        .map_err(|_| err("voxel data does not match the header's shape".into()))?;
    let data = arr.as_standard_layout().into_owned();
    reject_non_finite(&data, dtype, scl_slope != 0.0).map_err(err)?;

    Ok((
        Volume {
            data,
            spacing,
            affine,
        },
        NiftiInfo {
            version,
            dtype,
            affine_source,
            scl_slope,
            scl_inter,
            scaling_note: ((scl_slope, scl_inter) != (header.scl_slope, header.scl_inter)
                && header.scl_slope != 0.0)
                .then(|| {
                    format!(
                        "scl_slope {} / scl_inter {} are not usable; read with slope {} and intercept {} (0 = no scaling), as nibabel does",
                        header.scl_slope, header.scl_inter, scl_slope, scl_inter
                    )
                }),
        },
    ))
}

/// `Err` naming how many voxels are NaN or infinite and where the first is.
pub fn check_finite(data: &Array3<f32>) -> Result<(), String> {
    reject_non_finite(data, DType::Float32, false)
}

/// NaN or infinite voxels (stored as such, or made by the scaling) are an error: no
/// step of this tool can give them a meaning, and guessing a value would change
/// every number computed from the volume without a word.
fn reject_non_finite<T: Voxel>(data: &Array3<T>, dtype: DType, scaled: bool) -> Result<(), String> {
    if dtype.is_integer() && !scaled {
        return Ok(());
    }
    let finite = |v: &T| num_traits::cast::<T, f64>(*v).is_some_and(f64::is_finite);
    let (mut bad, mut first) = (0usize, [0usize; 3]);
    for ((i, j, k), v) in data.indexed_iter() {
        if !finite(v) {
            if bad == 0 {
                first = [i, j, k];
            }
            bad += 1;
        }
    }
    if bad == 0 {
        return Ok(());
    }
    Err(format!(
        "{bad} voxel(s) are NaN or infinite (the first at voxel {first:?}); replace them (for example with the background value) before using this image"
    ))
}

fn is_usable(m: &Matrix4<f64>) -> bool {
    m.iter().all(|x| x.is_finite()) && m.fixed_view::<3, 3>(0, 0).determinant().abs() > 1e-12
}

/// The voxel-to-world affine: sform if its code is set and it is usable, else
/// qform, else the diagonal of the spacing.
fn header_affine(
    h: &NiftiHeader,
    spacing: [f64; 3],
) -> Result<(Matrix4<f64>, &'static str), String> {
    if h.sform_code > 0 {
        let m = h.sform_affine::<f64>();
        if is_usable(&m) {
            return Ok((m, "sform"));
        }
    }
    if h.qform_code > 0 {
        let m = qform_affine(h);
        if is_usable(&m) {
            return Ok((m, "qform"));
        }
    }
    let mut m = Matrix4::identity();
    for a in 0..3 {
        m[(a, a)] = spacing[a];
    }
    Ok((m, "pixdim"))
}

/// The qform affine as nifti1_io's `quatern_to_mat44` computes it (the NIfTI
/// reference): a near-zero quaternion `a` is set to 0 and (b, c, d) renormalised,
/// which keeps 90° rotations exact despite the f32 storage.
fn qform_affine(h: &NiftiHeader) -> Matrix4<f64> {
    let (mut b, mut c, mut d) = (h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64);
    let mut a = 1.0 - (b * b + c * c + d * d);
    if a < 1e-7 {
        let n = (b * b + c * c + d * d).sqrt();
        if n > 0.0 {
            b /= n;
            c /= n;
            d /= n;
        }
        a = 0.0;
    } else {
        a = a.sqrt();
    }
    let [dx, dy, mut dz] = [1, 2, 3].map(|i| h.pixdim[i] as f64);
    if h.pixdim[0] < 0.0 {
        dz = -dz; // qfac
    }
    let r = [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - c * c - b * b,
        ],
    ];
    let t = [h.quatern_x, h.quatern_y, h.quatern_z].map(|x| x as f64);
    let mut m = Matrix4::identity();
    for row in 0..3 {
        m[(row, 0)] = r[row][0] * dx;
        m[(row, 1)] = r[row][1] * dy;
        m[(row, 2)] = r[row][2] * dz;
        m[(row, 3)] = t[row];
    }
    m
}

/// Bounds of the voxel types, for saturating casts.
pub trait Bounded {
    fn min_value_hint() -> Self;
    fn max_value_hint() -> Self;
}
macro_rules! bounded {
    ($($t:ty),*) => {$(
        impl Bounded for $t {
            fn min_value_hint() -> Self { <$t>::MIN }
            fn max_value_hint() -> Self { <$t>::MAX }
        }
    )*};
}
bounded!(i8, u8, i16, u16, i32, f32, f64);

/// Write a volume as NIfTI-1 (`.nii.gz` compresses) with voxel type `dtype`,
/// the volume's affine in both sform and qform (code 1, scanner) and its spacing
/// in pixdim. Values are rounded and saturated for integer types.
pub fn write_nifti<T: Voxel>(
    path: &Path,
    vol: &Volume<T>,
    dtype: DType,
) -> Result<(), VolumeError> {
    fn typed<T: Voxel, U: Voxel>(vol: &Volume<T>, integer: bool) -> Array3<U> {
        vol.data.map(|&v| cast_voxel::<T, U>(v, integer))
    }
    let int = dtype.is_integer();
    match dtype {
        DType::Int8 => write_typed(path, vol, &typed::<T, i8>(vol, int)),
        DType::Uint8 => write_typed(path, vol, &typed::<T, u8>(vol, int)),
        DType::Int16 => write_typed(path, vol, &typed::<T, i16>(vol, int)),
        DType::Uint16 => write_typed(path, vol, &typed::<T, u16>(vol, int)),
        DType::Int32 => write_typed(path, vol, &typed::<T, i32>(vol, int)),
        DType::Float32 => write_typed(path, vol, &typed::<T, f32>(vol, int)),
        DType::Float64 => write_typed(path, vol, &typed::<T, f64>(vol, int)),
    }
}

pub(crate) fn cast_voxel<T: Voxel, U: Voxel>(v: T, integer_target: bool) -> U {
    let x: f64 = num_traits::cast(v).unwrap_or(f64::NAN);
    let x = if integer_target { x.round() } else { x };
    match num_traits::cast::<f64, U>(x) {
        Some(u) if !(integer_target && x.is_nan()) => u,
        _ => {
            let lo: f64 = num_traits::cast(U::min_value_hint()).unwrap_or(0.0);
            if x.is_nan() {
                num_traits::cast::<f64, U>(0.0).unwrap_or(U::min_value_hint())
            } else if x < lo {
                U::min_value_hint()
            } else {
                U::max_value_hint()
            }
        }
    }
}

fn write_typed<T, U: Voxel>(
    path: &Path,
    vol: &Volume<T>,
    data: &Array3<U>,
) -> Result<(), VolumeError> {
    write_any(path, data, vol.spacing, &vol.affine)
}

/// Write a 4D float32 volume `[K, X, Y, Z]` as NIfTI `[X, Y, Z, K]` (e.g. class probabilities).
pub fn write_nifti_4d(
    path: &Path,
    data: &ndarray::Array4<f32>,
    spacing: [f64; 3],
    affine: &Matrix4<f64>,
) -> Result<(), VolumeError> {
    let xyzk = data
        .view()
        .permuted_axes([1, 2, 3, 0])
        .as_standard_layout()
        .into_owned();
    write_any(path, &xyzk, spacing, affine)
}

fn write_any<U: Voxel, D: ndarray::Dimension + ndarray::RemoveAxis>(
    path: &Path,
    data: &ndarray::Array<U, D>,
    spacing: [f64; 3],
    affine: &Matrix4<f64>,
) -> Result<(), VolumeError> {
    let err = |p: String| VolumeError::new(path, p);
    if spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(err(format!(
            "cannot write a volume with spacing {spacing:?}"
        )));
    }
    if data
        .shape()
        .iter()
        .any(|&n| n == 0 || n > i16::MAX as usize)
    {
        return Err(err(format!(
            "cannot write a volume of shape {:?}",
            data.shape()
        )));
    }
    let mut header = NiftiHeader::default();
    header.set_sform(affine, XForm::ScannerAnat);
    header.set_qform(affine, XForm::ScannerAnat);
    for a in 0..3 {
        header.pixdim[a + 1] = spacing[a] as f32;
    }
    header.xyzt_units = 2 | 8; // mm, s
    let _ = header.set_description_str("rlu2net");

    let name = path
        .file_name()
        .ok_or_else(|| err("not a file path".into()))?
        .to_string_lossy()
        .to_string();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let ext = if name.ends_with(".nii.gz") {
        ".nii.gz"
    } else if name.ends_with(".nii") {
        ".nii"
    } else {
        return Err(err("output file name must end in .nii or .nii.gz".into()));
    };
    // the nifti writer rewrites everything after the first dot it sees, so no inner dots
    let stem = name[..name.len() - ext.len()].replace('.', "_");
    let tmp = dir.join(format!(".{stem}-{}-partial{ext}", std::process::id()));
    let result = WriterOptions::new(&tmp)
        .reference_header(&header)
        .write_nifti(data)
        .map_err(|e| err(format!("cannot write: {e}")))
        .and_then(|_| {
            super::rename_durably(&tmp, path)
                .map_err(|e| err(format!("cannot move into place: {e}")))
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
