//! NWB 2.x building blocks written straight through libhdf5: typed groups and datasets with the
//! attributes NWB readers key on (`neurodata_type`, `namespace`, `object_id`), TimeSeries with
//! their timing, and hdmf-common tables (DynamicTable, VectorData, VectorIndex, ElementIdentifiers,
//! DynamicTableRegion).
//!
//! Why not a Python writer: the rig has no Python, and a session's movie must be streamed block by
//! block into one dataset, which these primitives allow (`dataset` returns the open dataset).
//! The layout follows what pynwb itself writes, so pynwb reads the file back with its own classes
//! and `pynwb.validate` checks it against its own copy of the schema (the file does not cache the
//! schema under `/specifications`; pynwb and nwbinspector use theirs when it is absent).

use hdf5::types::VarLenUnicode;
use hdf5::{Dataset, Group, H5Type, Location, ObjectReference1};
use thiserror::Error;

/// The NWB schema version the exported layout follows.
pub const NWB_VERSION: &str = "2.8.0";
pub const CORE: &str = "core";
pub const HDMF_COMMON: &str = "hdmf-common";

/// An HDF5 call that failed while writing the object at `location`.
#[derive(Debug, Error)]
#[error("cannot write `{location}`: {message}")]
pub struct WriteError {
    pub location: String,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, WriteError>;

pub(crate) fn at(location: &str) -> impl Fn(hdf5::Error) -> WriteError + '_ {
    move |e| WriteError {
        location: location.to_string(),
        message: e.to_string().lines().next().unwrap_or("").to_string(),
    }
}

/// A random (version 4) UUID in its text form, the `object_id` NWB gives every typed object.
/// rand's thread RNG is seeded from the OS, which is all UUID4 asks for.
pub fn uuid4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn vlen(location: &str, s: &str) -> Result<VarLenUnicode> {
    s.parse().map_err(|e| WriteError {
        location: location.to_string(),
        message: format!("text is not valid for HDF5: {e}"),
    })
}

pub fn str_attr(loc: &Location, name: &str, value: &str) -> Result<()> {
    let v = vlen(name, value)?;
    loc.new_attr::<VarLenUnicode>()
        .create(name)
        .and_then(|a| a.write_scalar(&v))
        .map_err(at(name))
}

pub fn num_attr<T: H5Type>(loc: &Location, name: &str, value: T) -> Result<()> {
    loc.new_attr::<T>()
        .create(name)
        .and_then(|a| a.write_scalar(&value))
        .map_err(at(name))
}

pub fn str_array_attr(loc: &Location, name: &str, values: &[&str]) -> Result<()> {
    let v = values
        .iter()
        .map(|s| vlen(name, s))
        .collect::<Result<Vec<_>>>()?;
    loc.new_attr::<VarLenUnicode>()
        .shape([v.len()])
        .create(name)
        .and_then(|a| a.write(&v))
        .map_err(at(name))
}

/// An object reference attribute (`target` of a VectorIndex, `table` of a DynamicTableRegion),
/// as the old-style `H5R_OBJECT` references h5py and pynwb write.
pub fn ref_attr(loc: &Location, name: &str, file: &hdf5::File, target: &str) -> Result<()> {
    let r: ObjectReference1 = file.reference(target).map_err(at(target))?;
    loc.new_attr::<ObjectReference1>()
        .create(name)
        .and_then(|a| a.write_scalar(&r))
        .map_err(at(name))
}

/// Marks an object as an instance of `ndtype` from `namespace`, with a fresh object id.
pub fn typed(loc: &Location, namespace: &str, ndtype: &str) -> Result<()> {
    str_attr(loc, "namespace", namespace)?;
    str_attr(loc, "neurodata_type", ndtype)?;
    str_attr(loc, "object_id", &uuid4())
}

pub fn group(parent: &Group, name: &str) -> Result<Group> {
    if parent.link_exists(name) {
        parent.group(name).map_err(at(name))
    } else {
        parent.create_group(name).map_err(at(name))
    }
}

/// A new typed group.
pub fn typed_group(parent: &Group, name: &str, namespace: &str, ndtype: &str) -> Result<Group> {
    let g = parent.create_group(name).map_err(at(name))?;
    typed(&g, namespace, ndtype)?;
    Ok(g)
}

/// A scalar text dataset (NWB `text`).
pub fn text(parent: &Group, name: &str, value: &str) -> Result<Dataset> {
    let v = vlen(name, value)?;
    let ds = parent
        .new_dataset::<VarLenUnicode>()
        .create(name)
        .map_err(at(name))?;
    ds.write_scalar(&v).map_err(at(name))?;
    Ok(ds)
}

/// A 1-D text dataset.
pub fn text_array(parent: &Group, name: &str, values: &[&str]) -> Result<Dataset> {
    let v = values
        .iter()
        .map(|s| vlen(name, s))
        .collect::<Result<Vec<_>>>()?;
    parent
        .new_dataset_builder()
        .with_data(&v)
        .create(name)
        .map_err(at(name))
}

pub fn scalar<T: H5Type>(parent: &Group, name: &str, value: T) -> Result<Dataset> {
    let ds = parent.new_dataset::<T>().create(name).map_err(at(name))?;
    ds.write_scalar(&value).map_err(at(name))?;
    Ok(ds)
}

/// Storage of a dataset that is written in blocks of rows.
#[derive(Debug, Clone, Copy)]
pub struct Storage {
    /// gzip (deflate) level 1..=9 with the byte shuffle filter; 0 stores uncompressed.
    pub gzip: u8,
}

/// A dataset of `shape`, chunked along its first axis (about 1 MiB per chunk, or `chunk_rows`
/// when given) so that rows can be written block by block; empty datasets are contiguous.
pub fn dataset<T: H5Type>(
    parent: &Group,
    name: &str,
    shape: &[usize],
    chunk_rows: Option<usize>,
    storage: Storage,
) -> Result<Dataset> {
    let mut b = parent.new_dataset::<T>().shape(shape.to_vec());
    if shape.iter().all(|&n| n > 0) {
        let row: usize = shape[1..].iter().product::<usize>().max(1) * std::mem::size_of::<T>();
        let rows = chunk_rows.unwrap_or((1 << 20) / row).clamp(1, shape[0]);
        let mut chunk = shape.to_vec();
        chunk[0] = rows;
        b = b.chunk(chunk);
        if storage.gzip > 0 {
            b = b.shuffle().deflate(storage.gzip);
        }
    }
    b.create(name).map_err(at(name))
}

/// A whole dataset written at once from `data` laid out as `shape` (row-major).
pub fn array<T: H5Type + Copy>(
    parent: &Group,
    name: &str,
    shape: &[usize],
    data: &[T],
    storage: Storage,
) -> Result<Dataset> {
    let ds = dataset::<T>(parent, name, shape, None, storage)?;
    write_rows(&ds, name, shape, 0, data)?;
    Ok(ds)
}

/// Writes rows `start..` of a 1-D..4-D dataset whose full shape is `shape`.
pub fn write_rows<T: H5Type + Copy>(
    ds: &Dataset,
    name: &str,
    shape: &[usize],
    start: usize,
    data: &[T],
) -> Result<()> {
    let row: usize = shape[1..].iter().product::<usize>().max(1);
    let n = data.len() / row;
    if n == 0 {
        return Ok(());
    }
    let bad = |e: ndarray::ShapeError| WriteError {
        location: name.to_string(),
        message: e.to_string(),
    };
    let r = start..start + n;
    match shape.len() {
        1 => ds.write_slice(data, ndarray::s![r]),
        2 => {
            let a = ndarray::ArrayView2::from_shape((n, shape[1]), data).map_err(bad)?;
            ds.write_slice(a, ndarray::s![r, ..])
        }
        3 => {
            let a = ndarray::ArrayView3::from_shape((n, shape[1], shape[2]), data).map_err(bad)?;
            ds.write_slice(a, ndarray::s![r, .., ..])
        }
        _ => {
            let a = ndarray::ArrayView4::from_shape((n, shape[1], shape[2], shape[3]), data)
                .map_err(bad)?;
            ds.write_slice(a, ndarray::s![r, .., .., ..])
        }
    }
    .map_err(at(name))
}

/// Writes one chunk exactly as given (already filtered, e.g. deflated; `mask` says which filters
/// were skipped), at the chunk whose first element is `offset`: libhdf5's direct chunk write.
pub fn write_chunk_raw(
    ds: &Dataset,
    name: &str,
    offset: &[u64],
    mask: u32,
    bytes: &[u8],
) -> Result<()> {
    let id = ds.id();
    let rc = hdf5::sync::sync(|| unsafe {
        hdf5_sys::h5d::H5Dwrite_chunk(
            id,
            hdf5_sys::h5p::H5P_DEFAULT,
            mask,
            offset.as_ptr(),
            bytes.len(),
            bytes.as_ptr().cast(),
        )
    });
    if rc < 0 {
        return Err(WriteError {
            location: name.to_string(),
            message: format!("direct write of the chunk at {offset:?} failed"),
        });
    }
    Ok(())
}

/// How a TimeSeries says when its samples were taken.
#[derive(Debug, Clone)]
pub enum Timing {
    /// Evenly spaced samples: first time and rate (Hz).
    Rate { start: f64, rate: f64 },
    /// One rig-clock time per sample.
    Timestamps(Vec<f64>),
}

impl Timing {
    /// Evenly spaced times become a rate (nwbinspector flags regular timestamps: the rule here is
    /// its own, every interval equal to the first within 1 ns); anything else stays timestamps.
    pub fn of(times: Vec<f64>) -> Timing {
        if times.len() > 2 {
            let d0 = times[1] - times[0];
            if d0 > 0.0 && times.windows(2).all(|w| ((w[1] - w[0]) - d0).abs() <= 1e-9) {
                return Timing::Rate {
                    start: times[0],
                    rate: 1.0 / d0,
                };
            }
        }
        Timing::Timestamps(times)
    }

    pub fn len_hint(&self) -> Option<usize> {
        match self {
            Timing::Rate { .. } => None,
            Timing::Timestamps(t) => Some(t.len()),
        }
    }
}

/// A TimeSeries (or subtype) group with its description and timing; the caller adds `data`
/// (through [`data`]) and any type-specific fields.
pub fn time_series(
    parent: &Group,
    name: &str,
    ndtype: &str,
    description: &str,
    timing: &Timing,
) -> Result<Group> {
    let g = typed_group(parent, name, CORE, ndtype)?;
    str_attr(&g, "description", description)?;
    str_attr(&g, "comments", "no comments")?;
    match timing {
        Timing::Rate { start, rate } => {
            let ds = scalar(&g, "starting_time", *start)?;
            num_attr(&ds, "rate", *rate as f32)?;
            str_attr(&ds, "unit", "seconds")?;
        }
        Timing::Timestamps(t) => {
            let ds = array(&g, "timestamps", &[t.len()], t, Storage { gzip: 0 })?;
            num_attr(&ds, "interval", 1i32)?;
            str_attr(&ds, "unit", "seconds")?;
        }
    }
    Ok(g)
}

/// The attributes every TimeSeries `data` carries.
pub fn data_attrs(ds: &Dataset, unit: &str) -> Result<()> {
    str_attr(ds, "unit", unit)?;
    num_attr(ds, "conversion", 1.0f32)?;
    num_attr(ds, "offset", 0.0f32)?;
    num_attr(ds, "resolution", -1.0f32)
}

/// `data` of a TimeSeries, written whole.
pub fn data<T: H5Type + Copy>(
    ts: &Group,
    shape: &[usize],
    values: &[T],
    unit: &str,
    storage: Storage,
) -> Result<Dataset> {
    let ds = array(ts, "data", shape, values, storage)?;
    data_attrs(&ds, unit)?;
    Ok(ds)
}

/// A DynamicTable (or subtype) group; add columns with [`column`] and the ids with [`ids`].
pub fn table(
    parent: &Group,
    name: &str,
    namespace: &str,
    ndtype: &str,
    description: &str,
    colnames: &[&str],
) -> Result<Group> {
    let g = typed_group(parent, name, namespace, ndtype)?;
    str_attr(&g, "description", description)?;
    str_array_attr(&g, "colnames", colnames)?;
    Ok(g)
}

/// The `id` column (ElementIdentifiers) of a table.
pub fn ids(table: &Group, ids: &[i64]) -> Result<Dataset> {
    let ds = array(table, "id", &[ids.len()], ids, Storage { gzip: 0 })?;
    typed(&ds, HDMF_COMMON, "ElementIdentifiers")?;
    Ok(ds)
}

/// A VectorData column of `shape` (rows first).
pub fn column<T: H5Type + Copy>(
    table: &Group,
    name: &str,
    description: &str,
    shape: &[usize],
    values: &[T],
) -> Result<Dataset> {
    let ds = array(table, name, shape, values, Storage { gzip: 0 })?;
    typed(&ds, HDMF_COMMON, "VectorData")?;
    str_attr(&ds, "description", description)?;
    Ok(ds)
}

/// The VectorIndex `NAME_index` of a ragged column `NAME`: row r owns `NAME[index[r-1]..index[r]]`.
pub fn column_index(
    file: &hdf5::File,
    table: &Group,
    column: &str,
    ends: &[u64],
) -> Result<Dataset> {
    let name = format!("{column}_index");
    let ds = array(table, &name, &[ends.len()], ends, Storage { gzip: 0 })?;
    typed(&ds, HDMF_COMMON, "VectorIndex")?;
    str_attr(
        &ds,
        "description",
        &format!("Index for VectorData '{column}'"),
    )?;
    ref_attr(&ds, "target", file, &format!("{}/{column}", table.name()))?;
    Ok(ds)
}

/// A DynamicTableRegion dataset: rows (indices) of the table at `table_path`.
pub fn region(
    file: &hdf5::File,
    parent: &Group,
    name: &str,
    description: &str,
    rows: &[i64],
    table_path: &str,
) -> Result<Dataset> {
    let ds = array(parent, name, &[rows.len()], rows, Storage { gzip: 0 })?;
    typed(&ds, HDMF_COMMON, "DynamicTableRegion")?;
    str_attr(&ds, "description", description)?;
    ref_attr(&ds, "table", file, table_path)?;
    Ok(ds)
}

/// A ProcessingModule under `/processing`.
pub fn module(file: &hdf5::File, name: &str, description: &str) -> Result<Group> {
    let processing = file.group("processing").map_err(at("processing"))?;
    let g = typed_group(&processing, name, CORE, "ProcessingModule")?;
    str_attr(&g, "description", description)?;
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_are_version_4_uuids() {
        let a = uuid4();
        let b = uuid4();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{a}");
        assert!("89ab".contains(&parts[3][..1]), "{a}");
    }

    #[test]
    fn regular_times_become_a_rate_and_jittered_ones_stay_timestamps() {
        let t: Vec<f64> = (0..100).map(|i| 0.5 + i as f64 / 30.0).collect();
        match Timing::of(t.clone()) {
            Timing::Rate { start, rate } => {
                assert_eq!(start, 0.5);
                assert!((rate - 30.0).abs() < 1e-9);
            }
            other => panic!("{other:?}"),
        }
        let mut j = t;
        j[50] += 1e-4;
        assert!(matches!(Timing::of(j), Timing::Timestamps(_)));
        assert!(matches!(Timing::of(vec![1.0, 2.0]), Timing::Timestamps(_)));
    }
}
