"""ReDi-style PCA semantics against NumPy, and as a drop-in for the SemVAE in extraction."""

import numpy as np
import pytest
import torch

from sfd.tokenizers.pca import PCAProjector, fit_pca


def features(seed=0, n=40, tokens=16, dim=12):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) * np.linspace(3, 0.1, dim)[:, None]
    data = rng.normal(size=(n * tokens, dim)) @ mixing + rng.normal(size=dim)
    return torch.from_numpy(data.reshape(n, tokens, dim)).float()


def test_pca_matches_numpy_and_is_orthonormal_and_ordered():
    data = features()
    pca = fit_pca(data.split(7), num_components=5)  # accumulated over uneven batches
    flat = data.reshape(-1, 12).double().numpy()
    covariance = np.cov(flat, rowvar=False)
    values, vectors = np.linalg.eigh(covariance)
    order = np.argsort(values)[::-1][:5]
    assert np.allclose(pca.explained_variance.numpy(), values[order], rtol=1e-4)
    assert np.all(np.diff(pca.explained_variance.numpy()) <= 0)
    gram = (pca.components @ pca.components.T).double().numpy()
    assert np.allclose(gram, np.eye(5), atol=1e-5)
    for k, index in enumerate(order):  # same directions up to sign
        assert abs(abs(float(pca.components[k].double() @ torch.from_numpy(vectors[:, index]))) - 1) < 1e-4
    assert np.allclose(pca.mean.numpy(), flat.mean(0), atol=1e-5)


def test_projection_round_trip_and_file(tmp_path):
    data = features(1, n=8)
    full = fit_pca(data.split(3), num_components=12)  # all components: exact round trip
    coefficients = full.project(data)
    assert coefficients.shape == (8, 12, 4, 4)
    assert torch.allclose(full.reconstruct(coefficients), data, atol=1e-4)
    # coefficients of token (row 1, col 2) sit at grid position [1, 2]
    assert torch.allclose(coefficients[0, :, 1, 2], (data[0, 6] - full.mean) @ full.components.T, atol=1e-5)
    assert torch.equal(full.posterior(data).sample(noise=torch.randn(1)), coefficients)
    loaded = PCAProjector.load(full.save(tmp_path / "pca.safetensors"))
    assert torch.equal(loaded.components, full.components)
    with pytest.raises(FileNotFoundError, match="fit_pca"):
        PCAProjector.load(tmp_path / "none.safetensors")
    with pytest.raises(ValueError, match="num_components"):
        fit_pca([data], num_components=13)
