//! Borrowed views of CPU tensors' values, so that secure noise is released in place: no copy
//! out of libtorch, no copy back, and no fresh model-sized buffer (each of which costs a pass
//! over memory and, for a fresh one, a page fault per 4 KiB).
//!
//! This is one of the four modules of the workspace allowed `unsafe` code (the others call the
//! device-memory and collectives shims, and keep `torch_cuda` linked): tch offers no safe mutable view of a tensor's memory. The view is
//! given only when it is sound to form Rust slices over that memory:
//! - every tensor is on the CPU, contiguous, of the slice's element kind (f32 or f64), does not
//!   require gradients (no autograd version counter is bypassed), and its data pointer is
//!   aligned for that kind;
//! - no two of the tensors' value ranges overlap, so the `&mut` slices never alias each other;
//! - each slice borrows its tensor mutably, so no libtorch call can reach that tensor through
//!   this handle while the slice lives.
//!
//! Other handles to the same storage (shallow clones, views) see the released values, exactly
//! as after libtorch's own in-place operations (`add_`); tch already lets such handles be used
//! from another thread, so the views add no race that safe tch code cannot already have. Unlike
//! `add_`, a write through a view does not bump libtorch's version counter, so values an
//! autograd graph saved for its backward pass must not be viewed: gradient sums never are.

use tch::{Device, Kind, Tensor};

/// The values of one tensor, borrowed mutably.
pub(crate) enum HostValues<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
}

/// Views of every tensor's values, in order, or `None` unless all of them qualify (see the
/// module docs). Every check runs before any view is formed.
pub(crate) fn host_values<'a>(
    tensors: impl IntoIterator<Item = &'a mut Tensor>,
) -> Option<Vec<HostValues<'a>>> {
    let mut checked = Vec::new();
    let mut ranges = Vec::new();
    for tensor in tensors {
        let width = match tensor.kind() {
            Kind::Float => std::mem::size_of::<f32>(),
            Kind::Double => std::mem::size_of::<f64>(),
            _ => return None,
        };
        let usable =
            tensor.device() == Device::Cpu && tensor.is_contiguous() && !tensor.requires_grad();
        if !usable {
            return None;
        }
        let len = tensor.numel();
        if len > 0 {
            let address = tensor.data_ptr() as usize;
            if address == 0 || address % width != 0 {
                return None;
            }
            ranges.push((address, address + len * width));
        }
        checked.push((tensor, len));
    }
    ranges.sort_unstable();
    if ranges.windows(2).any(|pair| pair[1].0 < pair[0].1) {
        return None;
    }
    Some(checked.into_iter().map(|(t, len)| view(t, len)).collect())
}

/// A view of the values of one contiguous `i64` CPU tensor that does not require gradients
/// (the staging buffer secure noise is drawn into before it is copied to an accelerator), or
/// `None` unless it qualifies as in [`host_values`].
pub(crate) fn host_integers(tensor: &mut Tensor) -> Option<&mut [i64]> {
    let usable = tensor.kind() == Kind::Int64
        && tensor.device() == Device::Cpu
        && tensor.is_contiguous()
        && !tensor.requires_grad();
    let len = tensor.numel();
    if !usable {
        return None;
    }
    if len == 0 {
        return Some(&mut []);
    }
    let data = tensor.data_ptr();
    if data.is_null() || data as usize % std::mem::align_of::<i64>() != 0 {
        return None;
    }
    Some(integers(tensor, len))
}

#[allow(unsafe_code)]
fn integers(tensor: &mut Tensor, len: usize) -> &mut [i64] {
    let data = tensor.data_ptr();
    // SAFETY: `host_integers` checked that the tensor lives on the CPU, is contiguous, holds
    // i64 elements and that `data` (its first value) is non-null and aligned; libtorch keeps
    // the storage alive while the tensor is, and the tensor stays borrowed mutably for the
    // slice's lifetime.
    unsafe { std::slice::from_raw_parts_mut(data.cast(), len) }
}

/// The slice over the `len` values of a tensor `host_values` checked.
#[allow(unsafe_code)]
fn view(tensor: &mut Tensor, len: usize) -> HostValues<'_> {
    let double = tensor.kind() == Kind::Double;
    if len == 0 {
        return match double {
            true => HostValues::F64(&mut []),
            false => HostValues::F32(&mut []),
        };
    }
    let data = tensor.data_ptr();
    // SAFETY: `host_values` checked that the tensor lives on the CPU, is contiguous (its `len`
    // values are consecutive from `data`, which points at the first one, storage offset
    // included), holds f32 or f64 elements as matched here, that `data` is non-null and
    // aligned for them, and that no other tensor viewed with it shares any of these bytes.
    // libtorch keeps the storage alive while the tensor is, and the tensor stays borrowed
    // mutably for the slice's lifetime.
    unsafe {
        match double {
            true => HostValues::F64(std::slice::from_raw_parts_mut(data.cast(), len)),
            false => HostValues::F32(std::slice::from_raw_parts_mut(data.cast(), len)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(kind: Kind) -> (Kind, Device) {
        (kind, Device::Cpu)
    }

    #[test]
    fn views_write_through_to_the_tensors() {
        let mut a = Tensor::zeros([3, 2], cpu(Kind::Float));
        let mut b = Tensor::zeros([4], cpu(Kind::Double));
        let mut empty = Tensor::zeros([0], cpu(Kind::Float));
        for values in host_values([&mut a, &mut b, &mut empty]).unwrap() {
            match values {
                HostValues::F32(v) => v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32),
                HostValues::F64(v) => v.iter_mut().for_each(|x| *x = -1.5),
            }
        }
        let expected = Tensor::arange(6, cpu(Kind::Float)).reshape([3, 2]);
        assert!(a.equal(&expected));
        assert!(b.equal(&Tensor::full([4], -1.5, cpu(Kind::Double))));
    }

    #[test]
    fn disjoint_parts_of_one_storage_are_viewed_and_overlapping_ones_are_not() {
        let whole = Tensor::zeros([10], cpu(Kind::Float));
        let (mut left, mut right) = (whole.narrow(0, 0, 5), whole.narrow(0, 5, 5));
        let views = host_values([&mut left, &mut right]).unwrap();
        for values in views {
            if let HostValues::F32(v) = values {
                v.fill(2.0);
            }
        }
        assert!(whole.equal(&Tensor::full([10], 2.0, cpu(Kind::Float))));
        let (mut first, mut second) = (whole.narrow(0, 0, 6), whole.narrow(0, 5, 5));
        assert!(host_values([&mut first, &mut second]).is_none());
        let (mut same, mut again) = (whole.shallow_clone(), whole.shallow_clone());
        assert!(host_values([&mut same, &mut again]).is_none());
    }

    #[test]
    fn integer_views_write_through_and_refuse_other_tensors() {
        let mut staging = Tensor::zeros([5], cpu(Kind::Int64));
        host_integers(&mut staging)
            .unwrap()
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = i as i64 - 2);
        assert!(staging.equal(&(Tensor::arange(5, cpu(Kind::Int64)) - 2)));
        let mut floats = Tensor::zeros([5], cpu(Kind::Float));
        let mut strided = Tensor::zeros([3, 2], cpu(Kind::Int64)).transpose(0, 1);
        assert!(host_integers(&mut floats).is_none());
        assert!(host_integers(&mut strided).is_none());
    }

    #[test]
    fn unsuitable_tensors_are_refused() {
        let mut transposed = Tensor::zeros([3, 2], cpu(Kind::Float)).transpose(0, 1);
        let mut integers = Tensor::zeros([3], cpu(Kind::Int64));
        let mut half = Tensor::zeros([3], cpu(Kind::BFloat16));
        let mut tracked = Tensor::zeros([3], cpu(Kind::Float)).set_requires_grad(true);
        for tensor in [&mut transposed, &mut integers, &mut half, &mut tracked] {
            assert!(host_values([tensor]).is_none());
        }
    }
}
