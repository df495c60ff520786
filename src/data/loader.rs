//! The training data loader: read rows, decode, augment, batch into NCHW f32 tensors, on worker
//! threads with a bounded number of batches in flight.
//!
//! Determinism: batch k of an epoch always holds the same samples (positions
//! [start + k·b, start + (k+1)·b) of the rank's epoch sequence), and each sample's augmentation
//! draws from a generator seeded by (seed, epoch, dataset index) alone. So the same
//! (seed, epoch, rank) gives identical batches whatever the number of threads, and a sample's
//! augmentation does not even depend on the number of ranks.
//!
//! A sample whose image or mask does not decode is left out of its batch and reported in
//! [`Batch::skipped`] (shard, row, id, reason); the consumer warns and counts. A batch whose
//! rows cannot be read at all (a truncated shard) is an error.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{unbounded, Receiver, Sender};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::augment::{augment_into, AugmentParams};
use super::codec::{decode_mask, decode_row_image};
use super::sampler::{mix_seed, Cursor, Sampler};
use super::schema::PseudoRow;
use super::{DataError, Dataset, ImageRow, ShardRow};

/// How batches are made.
#[derive(Debug, Clone)]
pub struct LoaderSpec {
    pub batch_size: usize,
    pub threads: usize,
    /// Batches in flight (being prepared or waiting for the consumer): bounds memory.
    pub prefetch: usize,
    pub augment: AugmentParams,
    pub with_mask: bool,
    pub seed: u64,
}

/// A sample left out of its batch.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedSample {
    pub index: usize,
    pub shard: String,
    pub row: usize,
    pub id: String,
    pub reason: String,
}

impl std::fmt::Display for SkippedSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} row {} id {}: {}", self.shard, self.row, self.id, self.reason)
    }
}

/// One batch. `images` is [n, 3, crop, crop] f32, `labels` [n, C] f32 multi-hot (column c−1
/// for class c), `masks` [n, crop, crop] u8 (255 = ignore/padding) when asked for.
pub struct Batch {
    pub images: Tensor,
    pub labels: Tensor,
    pub masks: Option<Tensor>,
    pub ids: Vec<String>,
    /// Global dataset indices of the delivered samples.
    pub indices: Vec<usize>,
    pub skipped: Vec<SkippedSample>,
    /// Where the epoch continues after this batch (save it to resume).
    pub cursor: Cursor,
}

/// Batches over one rank's share of a dataset.
pub struct Loader {
    dataset: Arc<Dataset>,
    sampler: Sampler,
    spec: LoaderSpec,
    crop: usize,
    num_classes: usize,
    masks: Option<MaskSource>,
}

/// Masks read from another dataset (pseudo-labels) instead of the image rows' own.
#[derive(Clone)]
struct MaskSource {
    labels: Arc<Dataset<PseudoRow>>,
    /// Row of `labels` for each image row ([`super::join::join_by_id`]).
    rows: Arc<Vec<usize>>,
}

impl Loader {
    pub fn new(dataset: Arc<Dataset>, sampler: Sampler, spec: LoaderSpec) -> Result<Loader, DataError> {
        recycle_large_allocations();
        let crop = spec.augment.crop as usize;
        if crop == 0 && spec.batch_size != 1 {
            return Err(DataError::Invalid("batches of more than one image need a fixed crop size".into()));
        }
        if sampler.len != dataset.len() {
            return Err(DataError::Invalid(format!("sampler covers {} rows, dataset has {}", sampler.len, dataset.len())));
        }
        let num_classes = dataset.manifest().num_classes() as usize;
        Ok(Loader {
            dataset,
            sampler,
            spec: LoaderSpec { threads: spec.threads.max(1), prefetch: spec.prefetch.max(1), ..spec },
            crop,
            num_classes,
            masks: None,
        })
    }

    /// Batches carry the masks of `labels` (a pseudo-label dataset of the same images; `rows`
    /// from [`super::join::join_by_id`]) instead of the image rows' own.
    pub fn with_pseudo_labels(self, labels: Arc<Dataset<PseudoRow>>, rows: Arc<Vec<usize>>) -> Loader {
        Loader { spec: LoaderSpec { with_mask: true, ..self.spec }, masks: Some(MaskSource { labels, rows }), ..self }
    }

    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// Batches of the cursor's epoch from the cursor's position on.
    pub fn epoch(&self, cursor: Cursor) -> EpochBatches {
        let indices = self.sampler.remaining(cursor);
        let total = indices.len().div_ceil(self.spec.batch_size);
        let job = Arc::new(BatchJob {
            dataset: self.dataset.clone(),
            spec: self.spec.clone(),
            crop: self.crop,
            num_classes: self.num_classes,
            masks: self.masks.clone(),
            cursor,
            indices,
        });
        let (job_tx, job_rx) = unbounded::<usize>();
        let (result_tx, result_rx) = unbounded();
        let workers = (0..self.spec.threads)
            .map(|_| {
                let (job, jobs, results) = (job.clone(), job_rx.clone(), result_tx.clone());
                std::thread::spawn(move || worker(&job, &jobs, &results))
            })
            .collect();
        for k in 0..total.min(self.spec.prefetch) {
            job_tx.send(k).expect("workers hold the receiver");
        }
        EpochBatches { jobs: Some(job_tx), results: result_rx, workers, pending: BTreeMap::new(), next: 0, total, prefetch: self.spec.prefetch }
    }
}

/// Everything a worker needs to build any batch of one epoch.
struct BatchJob {
    dataset: Arc<Dataset>,
    spec: LoaderSpec,
    crop: usize,
    num_classes: usize,
    masks: Option<MaskSource>,
    cursor: Cursor,
    /// The rank's remaining samples of the epoch.
    indices: Vec<usize>,
}

type BatchResult = (usize, Result<Batch, DataError>);

fn worker(job: &BatchJob, jobs: &Receiver<usize>, results: &Sender<BatchResult>) {
    for k in jobs.iter() {
        if results.send((k, job.build(k))).is_err() {
            return;
        }
    }
}

impl BatchJob {
    fn build(&self, k: usize) -> Result<Batch, DataError> {
        let b = self.spec.batch_size;
        let end = ((k + 1) * b).min(self.indices.len());
        let indices = &self.indices[k * b..end];
        let mut rows = self.dataset.read(indices)?;
        if let Some(source) = &self.masks {
            let label_rows: Vec<usize> = indices.iter().map(|&i| source.rows[i]).collect();
            for (row, label) in rows.iter_mut().zip(source.labels.read(&label_rows)?) {
                row.mask = Some(label.mask);
            }
        }
        let (n, side, plane) = (indices.len() as i64, self.crop as i64, self.crop * self.crop);
        let image_tensor = Tensor::empty([n, 3, side, side], (Kind::Float, Device::Cpu));
        let mask_tensor = Tensor::empty([if self.spec.with_mask { n } else { 0 }, side, side], (Kind::Uint8, Device::Cpu));
        let label_tensor = Tensor::zeros([n, self.num_classes as i64], (Kind::Float, Device::Cpu));
        // SAFETY: the three tensors were just allocated here, are contiguous CPU tensors of the
        // element types named, and nothing else refers to them while the slices live.
        let (images, masks, labels) = unsafe { (storage::<f32>(&image_tensor), storage::<u8>(&mask_tensor), storage::<f32>(&label_tensor)) };
        let (mut ids, mut kept, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
        for (&index, row) in indices.iter().zip(&rows) {
            let slot = kept.len();
            let mask_slot = self.spec.with_mask.then(|| &mut masks[slot * plane..(slot + 1) * plane]);
            let image_slot = &mut images[slot * 3 * plane..(slot + 1) * 3 * plane];
            let label_slot = &mut labels[slot * self.num_classes..(slot + 1) * self.num_classes];
            match self.sample(index, row, image_slot, mask_slot, label_slot) {
                Ok(()) => {
                    kept.push(index);
                    ids.push(row.id.clone());
                }
                Err(reason) => {
                    label_slot.fill(0.0);
                    let location = self.dataset.locate(index);
                    skipped.push(SkippedSample {
                        index,
                        shard: self.dataset.manifest().shards[location.shard].file.clone(),
                        row: location.row,
                        id: row.id.clone(),
                        reason,
                    });
                }
            }
        }
        // Slots past the delivered samples (left by skips) are cut off by a view.
        let delivered = kept.len() as i64;
        Ok(Batch {
            images: image_tensor.narrow(0, 0, delivered),
            labels: label_tensor.narrow(0, 0, delivered),
            masks: self.spec.with_mask.then(|| mask_tensor.narrow(0, 0, delivered)),
            ids,
            indices: kept,
            skipped,
            cursor: Cursor { epoch: self.cursor.epoch, position: self.cursor.position + end },
        })
    }

    /// Decodes and augments one row into its batch slot; an error is the reason to skip it.
    fn sample(&self, index: usize, row: &ImageRow, image: &mut [f32], mask: Option<&mut [u8]>, labels: &mut [f32]) -> Result<(), String> {
        row.check(self.num_classes as u16)?;
        let rgb = decode_row_image(row)?;
        for &label in &row.labels {
            labels[label as usize - 1] = 1.0;
        }
        let decoded_mask = match (&mask, &row.mask) {
            (None, _) => None,
            (Some(_), None) => return Err("no mask in this row, but the loader was asked for masks".into()),
            (Some(_), Some(bytes)) => {
                let (w, h, ids) = decode_mask(bytes)?;
                if (w, h) != (rgb.width, rgb.height) {
                    return Err(format!("mask is {w}x{h} but the image is {}x{}", rgb.width, rgb.height));
                }
                Some(ids)
            }
        };
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&[self.spec.seed, self.cursor.epoch, index as u64]));
        augment_into(&rgb.pixels, rgb.width, rgb.height, decoded_mask.as_deref(), &self.spec.augment, &mut rng, image, mask).map_err(|e| e.to_string())
    }
}

/// Batches are tens of megabytes. glibc serves such blocks with a fresh mmap and unmaps them
/// on free, so every batch would page-fault its whole buffer in again (a third of the loader's
/// time, measured). Raising the mmap threshold once per process keeps them in the heap, where
/// freed batch memory is reused by the next batch.
fn recycle_large_allocations() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        const LIMIT: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes allocator tuning parameters; it is safe at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, LIMIT);
            libc::mallopt(libc::M_TRIM_THRESHOLD, LIMIT);
        }
    });
}

/// The memory of a freshly allocated, contiguous CPU tensor as a mutable slice, so that
/// workers write batch slots in place: no intermediate buffer, no second copy.
///
/// # Safety
/// `tensor` must be contiguous, on the CPU, hold elements of type `T`, and nothing else may
/// read or write it while the slice lives.
// A mutable view of a tensor's storage is what this function is for (see Safety).
#[allow(clippy::mut_from_ref)]
unsafe fn storage<T>(tensor: &Tensor) -> &mut [T] {
    debug_assert!(tensor.is_contiguous());
    let len = tensor.numel();
    if len == 0 {
        return &mut [];
    }
    std::slice::from_raw_parts_mut(tensor.data_ptr() as *mut T, len)
}

/// The batches of one epoch, in order. Dropping it stops the workers.
pub struct EpochBatches {
    jobs: Option<Sender<usize>>,
    results: Receiver<BatchResult>,
    workers: Vec<JoinHandle<()>>,
    /// Batches finished ahead of their turn.
    pending: BTreeMap<usize, Result<Batch, DataError>>,
    next: usize,
    total: usize,
    prefetch: usize,
}

impl EpochBatches {
    /// Number of batches this iterator yields in all.
    pub fn total(&self) -> usize {
        self.total
    }
}

impl Iterator for EpochBatches {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.total {
            return None;
        }
        let result = loop {
            if let Some(result) = self.pending.remove(&self.next) {
                break result;
            }
            match self.results.recv() {
                Ok((k, result)) => {
                    self.pending.insert(k, result);
                }
                Err(_) => break Err(DataError::Invalid("a loader worker thread stopped unexpectedly".into())),
            }
        };
        let ahead = self.next + self.prefetch;
        if ahead < self.total {
            if let Some(jobs) = &self.jobs {
                // A send fails only when every worker has gone, which recv reports above.
                let _ = jobs.send(ahead);
            }
        }
        self.next += 1;
        Some(result)
    }
}

impl Drop for EpochBatches {
    fn drop(&mut self) {
        // Closing the job queue ends each worker after its current batch.
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
