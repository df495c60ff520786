//! Networks in tch, with torchvision's parameter names where torchvision has the model.

pub mod resnet;
pub mod cam;
pub mod weights;
